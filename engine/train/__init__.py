"""Self-supervised contrastive training of the HSSCL network (no GDAL needed, except :mod:`.cache`)."""
