"""Graph refinement of tie point candidates (see :mod:`.refine`)."""
