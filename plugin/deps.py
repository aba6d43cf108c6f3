"""Check the engine's Python dependencies without importing them, and say how to install them.

QGIS imports the plugin at start-up, so this module only asks :func:`importlib.util.find_spec` whether a
package can be found and :mod:`importlib.metadata` which version it has; nothing heavy is imported and a
missing package never stops QGIS from starting.

Where packages go: the plugin's own folder in the QGIS profile (:func:`packages_dir`), installed with
``pip install --target`` (accepted by Debian 12's pip where a plain install is refused, PEP 668) and appended
to ``sys.path`` while the plugin is loaded (:func:`activate` / :func:`deactivate`), so QGIS's own numpy and GDAL
still come first.
"""
from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from dataclasses import dataclass, field

# import name -> (pip requirement, distribution name for the version check); "" = not pip-installable here
REQUIRED: dict[str, str] = {
    "numpy": "numpy",
    "osgeo": "",  # GDAL's Python bindings come with QGIS; cannot be pip-installed sensibly
    "scipy": "scipy",
    "cv2": "opencv-python-headless",
    "torch": "torch==2.13.0",
    "safetensors": "safetensors",
}
#: Optional packages: the feature that needs them is disabled (with the reason) where they are missing.
OPTIONAL: dict[str, str] = {
    "torch_geometric": "torch-geometric",
}
#: Lowest versions the engine is known to work with (distribution name -> version).
MIN_VERSIONS: dict[str, str] = {"torch": "2.13.0", "scipy": "1.10", "safetensors": "0.4", "numpy": "1.23"}
DISTRIBUTIONS = {"cv2": "opencv-python-headless", "osgeo": "GDAL", "torch_geometric": "torch-geometric"}

#: PyTorch wheel indexes: the CPU build by default (small, works everywhere), CUDA as an option.
TORCH_INDEXES: dict[str, str] = {
    "cpu": "https://download.pytorch.org/whl/cpu",
    "cuda": "https://download.pytorch.org/whl/cu128",
}
PYPI = "https://pypi.org/simple"
ENV_PACKAGES = "HSSCL_PACKAGES"  # overrides the packages folder (tests, shared installs)


@dataclass(frozen=True)
class DependencyStatus:
    """Result of :func:`check`: which packages are missing (or too old) and how to install them."""

    missing: tuple[str, ...]
    python: str
    target: str = ""
    outdated: tuple[str, ...] = ()
    optional_missing: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.missing and not self.outdated

    @property
    def requirements(self) -> list[str]:
        return [REQUIRED[m] for m in (*self.missing, *self.outdated) if REQUIRED.get(m)]

    def install_args(self, variant: str = "cpu") -> list[str]:
        """The pip command as an argument list (``[]`` when nothing pip-installable is missing)."""
        return pip_args(self.python, self.requirements, self.target, variant)

    def command(self, variant: str = "cpu") -> str:
        args = self.install_args(variant)
        return _quote(args) if args else ""

    @property
    def install_command(self) -> str:
        return self.command("cpu")

    @property
    def message(self) -> str:
        if self.ok:
            return ""
        names = ", ".join((*self.missing, *(f"{m} (too old)" for m in self.outdated)))
        text = f"HSSCL Co-register needs Python packages that the Python of QGIS cannot find: {names}. "
        if self.install_command:
            text += ("Install them with Install… in the HSSCL panel (into the plugin's package folder of this "
                     "QGIS profile), or run this command in a terminal (on Windows the OSGeo4W Shell), then "
                     "restart QGIS:")
        else:
            text += "Reinstall QGIS with its GDAL Python bindings."
        return text

    @property
    def graph_note(self) -> str:
        """Why the graph refinement is unavailable ("" when torch-geometric is there)."""
        if "torch_geometric" not in self.optional_missing:
            return ""
        return ("Graph refinement needs the optional package torch-geometric (not installed): "
                f'"{self.python}" -m pip install --target "{self.target}" torch-geometric')


def _quote(args: list[str]) -> str:
    if os.name == "nt":
        return " ".join(f'"{a}"' if (" " in a or not a) else a for a in args)
    return " ".join(shlex.quote(a) if a != args[0] else f'"{a}"' for a in args)


def pip_args(python: str, requirements: list[str], target: str, variant: str = "cpu") -> list[str]:
    """``python -m pip install --target DIR ...`` with PyTorch's CPU (default) or CUDA wheel index."""
    if not requirements:
        return []
    args = [python, "-m", "pip", "install", "--upgrade", "--disable-pip-version-check"]
    if target:
        args += ["--target", target]
    if any(r.startswith("torch") and not r.startswith("torch-") for r in requirements):
        args += ["--index-url", TORCH_INDEXES.get(variant, TORCH_INDEXES["cpu"]), "--extra-index-url", PYPI]
    return args + list(requirements)


def _is_missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def installed_version(module: str) -> str | None:
    """Version of the distribution that provides ``module`` (None when unknown); nothing is imported."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTIONS.get(module, module))
    except metadata.PackageNotFoundError:
        return None


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(c for c in piece if c.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _too_old(module: str) -> bool:
    need = MIN_VERSIONS.get(module)
    have = installed_version(module) if need else None
    return bool(need and have and _version_tuple(have) < _version_tuple(need))


def python_executable() -> str:
    """The Python interpreter QGIS really runs.

    ``sys.executable`` is the QGIS binary on Windows and macOS, and on Linux it is whatever ``python3`` comes
    first on the PATH when QGIS starts (a pyenv shim, a conda Python...): not the interpreter QGIS embeds.
    The interpreter of the running Python is found from its installation prefix and version instead.
    """
    major, minor = sys.version_info[:2]
    prefixes = [p for p in dict.fromkeys((sys.base_exec_prefix, sys.exec_prefix, sys.base_prefix)) if p]
    candidates: list[str] = []
    for prefix in prefixes:
        if os.name == "nt":  # OSGeo4W: apps/Python3x/python.exe; the standalone installer alike
            candidates.append(os.path.join(prefix, "python.exe"))
            candidates.append(os.path.join(prefix, "python3.exe"))
        else:  # Linux (/usr/bin/python3.11), macOS bundle (.../Frameworks/Python.framework/.../bin)
            candidates.append(os.path.join(prefix, "bin", f"python{major}.{minor}"))
            candidates.append(os.path.join(prefix, "bin", f"python{major}"))
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    exe = sys.executable or ""
    if os.path.basename(exe).lower().startswith("python") and os.path.isfile(exe):
        return exe
    return exe or f"python{major}"


def packages_dir(settings_dir: str | None = None) -> str:
    """The plugin's own package folder in the QGIS profile, one per Python version (wheels are ABI-specific)."""
    if os.environ.get(ENV_PACKAGES):
        return os.environ[ENV_PACKAGES]
    if settings_dir is None:
        try:
            from qgis.core import QgsApplication

            settings_dir = QgsApplication.qgisSettingsDirPath()
        except ImportError:  # outside QGIS
            settings_dir = os.path.join(os.path.expanduser("~"), ".hsscl")
    major, minor = sys.version_info[:2]
    return os.path.join(settings_dir, "python", "hsscl_packages", f"py{major}{minor}")


_ADDED: list[str] = []


def activate(path: str | None = None) -> str:
    """Append the package folder to ``sys.path`` (after QGIS's own paths) when it exists; returns it."""
    path = path or packages_dir()
    if os.path.isdir(path) and path not in sys.path:
        sys.path.append(path)
        _ADDED.append(path)
        importlib.invalidate_caches()
    return path


def deactivate() -> None:
    """Remove what :func:`activate` added (plugin unload: leave ``sys.path`` as it was found)."""
    while _ADDED:
        path = _ADDED.pop()
        if path in sys.path:
            sys.path.remove(path)
    importlib.invalidate_caches()


def check() -> DependencyStatus:
    """Which of the packages the engine needs are missing or too old (nothing is imported)."""
    missing = tuple(name for name in REQUIRED if _is_missing(name))
    outdated = tuple(name for name in REQUIRED if name not in missing and _too_old(name))
    optional_missing = tuple(name for name in OPTIONAL if _is_missing(name))
    return DependencyStatus(missing=missing, python=python_executable(), target=packages_dir(),
                            outdated=outdated, optional_missing=optional_missing)
