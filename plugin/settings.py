"""Plugin settings stored with :class:`QgsSettings` (default device, threads, weights)."""
from __future__ import annotations

from dataclasses import dataclass

from qgis.core import QgsSettings

PREFIX = "hsscl"
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class PluginSettings:
    device: str = "auto"
    threads: int = 0          # 0 = let the engine decide
    weights: str = ""         # empty = the bundled default weights

    @classmethod
    def load(cls) -> PluginSettings:
        s = QgsSettings()
        device = str(s.value(f"{PREFIX}/device", cls.device))
        if device not in DEVICES:
            device = cls.device
        try:
            threads = max(0, int(s.value(f"{PREFIX}/threads", cls.threads)))
        except (TypeError, ValueError):
            threads = cls.threads
        weights = str(s.value(f"{PREFIX}/weights", cls.weights) or "")
        return cls(device=device, threads=threads, weights=weights)

    def save(self) -> None:
        s = QgsSettings()
        s.setValue(f"{PREFIX}/device", self.device)
        s.setValue(f"{PREFIX}/threads", int(self.threads))
        s.setValue(f"{PREFIX}/weights", self.weights)
