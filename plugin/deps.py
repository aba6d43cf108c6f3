"""Check the heavy Python dependencies without importing them.

QGIS imports the plugin at start-up, so this module only asks :func:`importlib.util.find_spec` whether a
package can be found; nothing is imported and a missing package never stops QGIS from starting.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass

# import name -> pip requirement (pins follow constraints.txt of the project)
REQUIRED: dict[str, str] = {
    "numpy": "numpy",
    "osgeo": "",  # GDAL's Python bindings come with QGIS; cannot be pip-installed sensibly
    "torch": "torch==2.13.0",
    "torch_geometric": "torch-geometric",
    "safetensors": "safetensors",
}


@dataclass(frozen=True)
class DependencyStatus:
    """Result of :func:`check`: which packages are missing and how to install them."""

    missing: tuple[str, ...]
    python: str

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def install_command(self) -> str:
        reqs = [REQUIRED[m] for m in self.missing if REQUIRED.get(m)]
        if not reqs:
            return ""
        return f'"{self.python}" -m pip install {" ".join(reqs)}'

    @property
    def message(self) -> str:
        if self.ok:
            return ""
        names = ", ".join(self.missing)
        text = (
            f"HSSCL Co-register needs Python packages that the Python of QGIS cannot find: {names}. "
        )
        if self.install_command:
            text += "Install them with this command (in a terminal; on Windows the OSGeo4W Shell), then restart QGIS:"
        else:
            text += "Reinstall QGIS with its GDAL Python bindings."
        return text


def _is_missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def python_executable() -> str:
    """The Python interpreter QGIS runs (``sys.executable`` is the QGIS binary on some platforms)."""
    exe = sys.executable or ""
    if os.path.basename(exe).lower().startswith("python"):
        return exe
    candidates = [
        os.path.join(sys.exec_prefix, "python.exe"),  # Windows / OSGeo4W
        os.path.join(sys.exec_prefix, "bin", f"python{sys.version_info.major}.{sys.version_info.minor}"),
        os.path.join(sys.exec_prefix, "bin", "python3"),  # macOS bundle, Linux
    ]
    for path in candidates:
        if os.path.isfile(path):
            return path
    return exe or "python3"


def check() -> DependencyStatus:
    """Which of the packages the engine needs are missing (nothing is imported)."""
    missing = tuple(name for name in REQUIRED if _is_missing(name))
    return DependencyStatus(missing=missing, python=python_executable())
