"""Session-wide test settings for all three levels (engine, Processing, widgets)."""
from __future__ import annotations

import gc

import pytest


@pytest.fixture(scope="session", autouse=True)
def _collect_before_qgis_exits(qgis_app):
    """Collect garbage while QGIS is still alive: pytest-qgis calls exitQgis() when its session fixture ends,
    and pytest collects garbage again after that; Qt/QGIS/GDAL wrappers freed then crashed the interpreter
    at exit (segfault or double free after a fully passing run)."""
    yield
    gc.collect()
