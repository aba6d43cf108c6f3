"""Install the engine's Python packages from inside QGIS: pip in a background :class:`QgsTask`, with progress
and a log, into the plugin's package folder of the QGIS profile (``pip install --target``, accepted where a
plain install is refused by PEP 668, e.g. Debian 12). The full command stays visible and copyable as the
fallback. QGIS stays usable while pip runs; Cancel stops pip."""
from __future__ import annotations

import os
import subprocess

from qgis.core import QgsApplication, QgsTask
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtGui import QFontDatabase
from qgis.PyQt.QtWidgets import (
    QApplication,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
)

from . import deps

VARIANTS = (("cpu", "CPU build of PyTorch (recommended, smaller download)"),
            ("cuda", "CUDA build of PyTorch (NVIDIA GPU; large download)"))


class PipTask(QgsTask):
    """Runs one command (pip) in a worker thread; each output line is emitted as ``line`` (queued to the GUI
    thread). ``result_code`` is the exit status (None while running, -1 when it could not start)."""

    line = pyqtSignal(str)

    def __init__(self, args: list[str], description: str = "Installing Python packages for HSSCL") -> None:
        super().__init__(description, QgsTask.Flag.CanCancel)
        self.args = list(args)
        self.result_code: int | None = None
        self.process: subprocess.Popen | None = None

    def run(self) -> bool:  # worker thread: no GUI access, only signals
        env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_NO_INPUT="1")
        flags = getattr(subprocess, "CREATE_NO_WINDOW", 0)
        try:
            self.process = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, text=True, bufsize=1, env=env,
                                            creationflags=flags)
        except OSError as err:
            self.line.emit(f"Could not start {self.args[0]}: {err}")
            self.result_code = -1
            return False
        assert self.process.stdout is not None
        steps = 0
        for text in self.process.stdout:
            text = text.rstrip()
            if text:
                self.line.emit(text)
            if text.startswith(("Collecting", "Downloading", "Installing", "Successfully")):
                steps += 1  # pip gives no total: creep towards 95 % with each step it reports
                self.setProgress(min(95.0, 100.0 * (1.0 - 0.9 ** steps)))
            if self.isCanceled():
                self.process.terminate()
                break
        self.result_code = self.process.wait()
        self.process.stdout.close()
        return self.result_code == 0 and not self.isCanceled()

    def cancel(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
        super().cancel()


class InstallDialog(QDialog):
    """Shows what is missing, the pip command in full (copyable), and installs on request.

    ``finished_install(ok)`` is emitted when pip ends; the package folder is then put on ``sys.path``."""

    finished_install = pyqtSignal(bool)

    def __init__(self, status: deps.DependencyStatus, parent=None) -> None:
        super().__init__(parent)
        self.setObjectName("HSSCLInstallDialog")
        self.setWindowTitle("HSSCL Co-register: install Python packages")
        self.status = status
        self.task: PipTask | None = None
        self.command_override: list[str] | None = None  # tests: a fake pip

        layout = QVBoxLayout(self)
        self.infoLabel = QLabel(self)
        self.infoLabel.setWordWrap(True)
        layout.addWidget(self.infoLabel)
        self.variantCombo = QComboBox(self)
        for value, label in VARIANTS:
            self.variantCombo.addItem(label, value)
        layout.addWidget(self.variantCombo)
        layout.addWidget(QLabel("Command (runs in the background; you can also copy it and run it in a terminal):"))
        self.commandText = QPlainTextEdit(self)
        self.commandText.setReadOnly(True)
        self.commandText.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.commandText.setMaximumHeight(90)
        layout.addWidget(self.commandText)
        row = QHBoxLayout()
        self.copyButton = QPushButton("Copy command", self)
        self.installButton = QPushButton("Install", self)
        self.cancelButton = QPushButton("Cancel install", self)
        self.cancelButton.setEnabled(False)
        for button in (self.copyButton, self.installButton, self.cancelButton):
            row.addWidget(button)
        layout.addLayout(row)
        self.progressBar = QProgressBar(self)
        self.progressBar.setRange(0, 100)
        self.progressBar.setValue(0)
        layout.addWidget(self.progressBar)
        self.statusLabel = QLabel(self)
        self.statusLabel.setWordWrap(True)
        layout.addWidget(self.statusLabel)
        self.logText = QPlainTextEdit(self)
        self.logText.setReadOnly(True)
        self.logText.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.logText.setPlaceholderText("pip's output appears here")
        layout.addWidget(self.logText, 1)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close, self)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.resize(640, 460)

        self.variantCombo.currentIndexChanged.connect(self._update_command)
        self.copyButton.clicked.connect(self.copy_command)
        self.installButton.clicked.connect(self.install)
        self.cancelButton.clicked.connect(self.cancel)
        self._update_command()

    # ---- state ------------------------------------------------------------------------------------------
    def variant(self) -> str:
        return self.variantCombo.currentData() or "cpu"

    def command_args(self) -> list[str]:
        if self.command_override is not None:
            return list(self.command_override)
        return self.status.install_args(self.variant())

    def _update_command(self, *_args) -> None:
        status = self.status
        if status.ok:
            self.infoLabel.setText("All the packages the engine needs are installed."
                                   + (f" {status.graph_note}" if status.graph_note else ""))
        else:
            missing = ", ".join((*status.missing, *status.outdated))
            self.infoLabel.setText(
                f"Missing for the engine: {missing}.\nPython of QGIS: {status.python}\n"
                f"Packages go to: {status.target}\n(the plugin adds this folder to QGIS's Python when it starts; "
                "delete it to uninstall)")
        self.commandText.setPlainText(status.command(self.variant()))
        can_install = bool(self.command_args()) and self.task is None
        self.installButton.setEnabled(can_install)
        self.copyButton.setEnabled(bool(self.commandText.toPlainText()))

    def copy_command(self) -> None:
        QApplication.clipboard().setText(self.commandText.toPlainText())

    # ---- running pip ------------------------------------------------------------------------------------
    def install(self) -> bool:
        args = self.command_args()
        if not args or self.task is not None:
            return False
        if self.status.target:
            os.makedirs(self.status.target, exist_ok=True)
        self.logText.appendPlainText("$ " + " ".join(args))
        self.progressBar.setValue(0)
        self.statusLabel.setText("Installing… (QGIS stays usable; this can take several minutes)")
        self.task = PipTask(args)
        self.task.line.connect(self.logText.appendPlainText)
        self.task.progressChanged.connect(lambda v: self.progressBar.setValue(int(v)))
        self.task.taskCompleted.connect(lambda: self._done(True))
        self.task.taskTerminated.connect(lambda: self._done(False))
        self.installButton.setEnabled(False)
        self.variantCombo.setEnabled(False)
        self.cancelButton.setEnabled(True)
        QgsApplication.taskManager().addTask(self.task)
        return True

    def cancel(self) -> None:
        if self.task is not None:
            self.statusLabel.setText("Cancelling…")
            self.task.cancel()

    def _done(self, ok: bool) -> None:
        task, self.task = self.task, None
        code = task.result_code if task is not None else None
        cancelled = task is not None and task.isCanceled()
        self.cancelButton.setEnabled(False)
        self.variantCombo.setEnabled(True)
        if ok:
            deps.activate(self.status.target or None)
            self.status = deps.check()
            self.progressBar.setValue(100)
            text = "Installed." if self.status.ok else (
                "pip finished, but these are still not found: "
                + ", ".join((*self.status.missing, *self.status.outdated)) + ". See the log.")
            self.statusLabel.setText(text + (" Restart QGIS if the panel does not enable Run." if self.status.ok
                                             else ""))
        else:
            self.progressBar.setValue(0)
            self.statusLabel.setText("Cancelled." if cancelled else
                                     f"pip failed (exit status {code}); see the log. You can copy the command "
                                     "and run it in a terminal instead.")
        self._update_command()
        self.finished_install.emit(bool(ok and self.status.ok))

    def reject(self) -> None:
        if self.task is not None:  # never leave pip running behind a closed dialog
            self.task.cancel()
            self.task.waitForFinished(10000)
        super().reject()
