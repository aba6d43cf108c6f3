"""HSSCL Co-register: QGIS plugin entry point.

Kept thin: QGIS imports this module at start-up, so nothing heavy (torch, GDAL) is imported here.
"""
__version__ = "0.1.0"


def classFactory(iface):  # noqa: N802 (QGIS API name)
    from .plugin.main import HSSCLPlugin

    return HSSCLPlugin(iface)
