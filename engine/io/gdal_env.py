"""GDAL's exception mode, on only around the engine's own GDAL/OGR/OSR calls.

The mode is global to the process (one flag per module: ``gdal``, ``ogr``, ``osr``) and shared with QGIS
and every other plugin, so the engine never sets it at import: :func:`gdal_exceptions` turns it on for the
block (or the decorated function) and puts back what it found, as rasterio's ``Env`` does for GDAL's
configuration options.

GDAL >= 3.7 has ``ExceptionMgr`` for exactly this. Before (Debian 12 has 3.6), ``UseExceptions`` pushes an
error handler per module and ``DontUseExceptions`` refuses ("Cannot call gdal.DontUseExceptions() at that
point since the stack of error handlers is: ...") unless its own handler is on top; so only the modules
found off are switched on, in the order gdal, ogr, osr, and switched off again in the reverse order.
Nested blocks do nothing (the mode is already on). The flag is process-wide in 3.6: GDAL calls made
by another thread while a block runs see exceptions on as well, and should another caller switch a
module on meanwhile (QGIS's main thread, say), GDAL 3.6 cannot switch ours off at the end: it stays on.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from osgeo import gdal, ogr, osr

_MODULES = (gdal, ogr, osr)


def exception_modes() -> tuple[bool, bool, bool]:
    """Whether exceptions are on in ``gdal``, ``ogr`` and ``osr`` (in that order)."""
    return tuple(bool(m.GetUseExceptions()) for m in _MODULES)  # type: ignore[return-value]


@contextmanager
def gdal_exceptions() -> Iterator[None]:
    """GDAL/OGR/OSR errors raise ``RuntimeError`` inside the block; each module's mode is restored after.

    Usable as a decorator too (``@gdal_exceptions()``)."""
    if all(hasattr(m, "ExceptionMgr") for m in _MODULES):  # GDAL >= 3.7
        with ExitStack() as stack:
            for m in _MODULES:
                stack.enter_context(m.ExceptionMgr(useExceptions=True))
            yield
        return
    switched = []
    try:
        for m in _MODULES:
            if not m.GetUseExceptions():
                m.UseExceptions()
                switched.append(m)
        yield
    finally:
        for m in reversed(switched):  # last on, first off: GDAL 3.6 checks its stack of error handlers
            try:
                m.DontUseExceptions()
            except RuntimeError:  # someone else switched a module on inside the block: theirs now
                pass
