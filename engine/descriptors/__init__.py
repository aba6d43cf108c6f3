"""Dense descriptors behind one interface (see :mod:`.base`)."""
from .base import DenseDescriptor, get_descriptor

__all__ = ["DenseDescriptor", "get_descriptor"]
