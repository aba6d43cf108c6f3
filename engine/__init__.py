"""The HSSCL matching engine: plain numpy/torch/GDAL, no Qt or QGIS."""
