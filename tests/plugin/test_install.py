"""Getting the engine's packages: the dependency check, the interpreter QGIS runs, the install dialog with a
fake pip (offscreen) and a real pip run of a tiny local wheel into a --target folder put on sys.path."""
from __future__ import annotations

import base64
import hashlib
import importlib
import os
import sys
import zipfile

import pytest

from .conftest import wait_for


def test_required_and_optional_packages():
    from hsscl.plugin import deps

    assert {"scipy", "cv2", "torch", "safetensors", "numpy", "osgeo"} <= set(deps.REQUIRED)
    assert deps.REQUIRED["cv2"] == "opencv-python-headless"
    assert "torch_geometric" not in deps.REQUIRED and "torch_geometric" in deps.OPTIONAL


def test_missing_torch_geometric_is_not_blocking(monkeypatch):
    from hsscl.plugin import deps

    real = deps._is_missing
    monkeypatch.setattr(deps, "_is_missing", lambda m: m == "torch_geometric" or real(m))
    status = deps.check()
    assert status.ok, status.message
    assert "torch-geometric" in status.graph_note


def test_command_installs_into_the_target_with_the_cpu_wheel():
    from hsscl.plugin import deps

    status = deps.DependencyStatus(("torch", "scipy", "osgeo"), "/usr/bin/python3.11", "/p/hsscl_packages/py311")
    args = status.install_args("cpu")
    assert args[:4] == ["/usr/bin/python3.11", "-m", "pip", "install"]
    assert args[args.index("--target") + 1] == "/p/hsscl_packages/py311"
    assert args[args.index("--index-url") + 1].endswith("/whl/cpu")
    assert "torch==2.13.0" in args and "scipy" in args and "" not in args  # GDAL is not pip-installed
    assert status.install_args("cuda")[args.index("--index-url") + 1].endswith("/whl/cu128")
    # no torch to install: no PyTorch index
    assert "--index-url" not in deps.DependencyStatus(("cv2",), "py", "/t").install_args()


def test_interpreter_is_not_a_shim_on_the_path(monkeypatch, tmp_path):
    """sys.executable may be a pyenv shim in the home folder: the interpreter comes from the prefix."""
    from hsscl.plugin import deps

    shim = tmp_path / "shims" / "python3"
    shim.parent.mkdir()
    shim.write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(shim))
    found = deps.python_executable()
    assert found != str(shim)
    assert os.path.realpath(found).startswith(os.path.realpath(sys.base_exec_prefix))
    assert os.path.basename(found) == f"python{sys.version_info.major}.{sys.version_info.minor}"


def test_version_too_old_is_reported(monkeypatch):
    from hsscl.plugin import deps

    monkeypatch.setattr(deps, "installed_version", lambda m: "2.1.0" if m == "torch" else None)
    status = deps.check()
    assert "torch" in status.outdated and not status.ok
    assert "torch==2.13.0" in status.install_command


def test_packages_dir_per_python_in_the_profile(tmp_path, monkeypatch):
    from hsscl.plugin import deps

    monkeypatch.delenv(deps.ENV_PACKAGES, raising=False)
    path = deps.packages_dir(str(tmp_path))
    assert path.startswith(str(tmp_path)) and path.endswith(f"py{sys.version_info.major}{sys.version_info.minor}")


def _fake_pip(tmp_path, code: int = 0) -> list[str]:
    script = tmp_path / "fake_pip.py"
    script.write_text(
        "import sys, time\n"
        "for name in ('torch', 'scipy', 'opencv-python-headless'):\n"
        "    print(f'Collecting {name}', flush=True)\n"
        "    time.sleep(0.05)\n"
        "print('Installing collected packages: torch, scipy', flush=True)\n"
        f"print('Successfully installed' if {code} == 0 else 'ERROR: no matching distribution', flush=True)\n"
        f"sys.exit({code})\n")
    return [sys.executable, str(script)]


@pytest.fixture
def dialog(qgis_app, tmp_path, monkeypatch):
    from hsscl.plugin import deps
    from hsscl.plugin.install import InstallDialog

    monkeypatch.setenv(deps.ENV_PACKAGES, str(tmp_path / "pkgs"))
    status = deps.DependencyStatus(("torch", "cv2"), deps.python_executable(), str(tmp_path / "pkgs"))
    widget = InstallDialog(status)
    yield widget
    widget.reject()
    widget.deleteLater()


def test_install_dialog_shows_the_full_command(dialog):
    text = dialog.commandText.toPlainText()
    assert text.startswith(f'"{dialog.status.python}" -m pip install') and "--target" in text and "whl/cpu" in text
    dialog.variantCombo.setCurrentIndex(dialog.variantCombo.findData("cuda"))
    assert "whl/cu128" in dialog.commandText.toPlainText()
    dialog.copy_command()
    from qgis.PyQt.QtWidgets import QApplication

    assert QApplication.clipboard().text() == dialog.commandText.toPlainText()


@pytest.mark.parametrize("code", [0, 1])
def test_install_dialog_runs_pip_in_a_task(dialog, tmp_path, code, monkeypatch):
    from hsscl.plugin import deps

    monkeypatch.setattr(deps, "activate", lambda path=None: path or "")
    done: list[bool] = []
    dialog.finished_install.connect(done.append)
    dialog.command_override = _fake_pip(tmp_path, code)
    assert dialog.install()
    assert not dialog.installButton.isEnabled() and dialog.cancelButton.isEnabled()
    assert wait_for(lambda: bool(done), 60)
    log = dialog.logText.toPlainText()
    assert "Collecting torch" in log and "Collecting opencv-python-headless" in log
    if code == 0:
        assert dialog.progressBar.value() == 100
        assert "pip failed" not in dialog.statusLabel.text()
    else:
        assert "pip failed (exit status 1)" in dialog.statusLabel.text()
        assert dialog.installButton.isEnabled()
    assert done == [code == 0]  # re-checked after pip: this environment has the packages


def test_install_dialog_cancel(dialog, tmp_path):
    script = tmp_path / "slow.py"
    script.write_text("import time\nprint('Collecting torch', flush=True)\ntime.sleep(60)\n")
    done: list[bool] = []
    dialog.finished_install.connect(done.append)
    dialog.command_override = [sys.executable, str(script)]
    dialog.install()
    assert wait_for(lambda: "Collecting torch" in dialog.logText.toPlainText(), 30)
    dialog.cancel()
    assert wait_for(lambda: bool(done), 30)
    assert dialog.statusLabel.text() == "Cancelled."


def _tiny_wheel(folder) -> str:
    """A minimal pure-Python wheel (no network, no build backend needed)."""
    name, version = "hsscl_tiny_pkg", "0.1"
    files = {f"{name}/__init__.py": b"VALUE = 42\n",
             f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    wheel = os.path.join(folder, f"{name}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
        zf.writestr(f"{name}-{version}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def test_real_pip_target_install_of_a_tiny_package(dialog, tmp_path):
    """pip --target (what the dialog runs) into the package folder, which then becomes importable."""
    from hsscl.plugin import deps

    wheel = _tiny_wheel(str(tmp_path))
    target = dialog.status.target
    dialog.command_override = [sys.executable, "-m", "pip", "install", "--no-index", "--disable-pip-version-check",
                               "--target", target, wheel]
    done: list[bool] = []
    dialog.finished_install.connect(done.append)
    try:
        dialog.install()
        assert wait_for(lambda: bool(done), 120), dialog.logText.toPlainText()
        assert "Successfully installed hsscl_tiny_pkg" in dialog.logText.toPlainText().replace("-", "_")
        assert target in sys.path  # activated after the install
        assert deps.installed_version("hsscl_tiny_pkg") == "0.1"
        assert importlib.import_module("hsscl_tiny_pkg").VALUE == 42
    finally:
        deps.deactivate()
        sys.modules.pop("hsscl_tiny_pkg", None)
    assert target not in sys.path


def test_dock_install_button_opens_the_dialog(qgis_iface, provider, project, monkeypatch):
    from hsscl.plugin import deps
    from hsscl.plugin.dock import HSSCLDock

    monkeypatch.setattr(deps, "check", lambda: deps.DependencyStatus(("torch",), "/usr/bin/python3", "/t"))
    dock = HSSCLDock(qgis_iface)
    try:
        dock.installButton.click()
        assert dock.install_dialog is not None and dock.install_dialog.isVisible()
        assert "torch==2.13.0" in dock.install_dialog.commandText.toPlainText()
    finally:
        dock.cleanup()
        dock.deleteLater()


def test_dock_graph_option_says_why_disabled(qgis_iface, provider, project, monkeypatch):
    from hsscl.plugin import deps
    from hsscl.plugin.dock import HSSCLDock

    monkeypatch.setattr(deps, "check", lambda: deps.DependencyStatus((), "/usr/bin/python3", "/t",
                                                                     optional_missing=("torch_geometric",)))
    dock = HSSCLDock(qgis_iface)
    try:
        assert dock.runButton.isEnabled()
        assert not dock.graphCheck.isEnabled() and "torch-geometric" in dock.graphCheck.toolTip()
    finally:
        dock.cleanup()
        dock.deleteLater()
