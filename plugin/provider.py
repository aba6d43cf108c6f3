"""The "HSSCL" Processing provider: coregister, match, apply."""
from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms.apply import ApplyAlgorithm
from .algorithms.base import ICON
from .algorithms.coregister import CoregisterAlgorithm
from .algorithms.match import MatchAlgorithm


class HSSCLProvider(QgsProcessingProvider):
    def id(self) -> str:
        return "hsscl"

    def name(self) -> str:
        return "HSSCL"

    def longName(self) -> str:  # noqa: N802
        from .. import __version__

        return f"HSSCL Co-register {__version__}"

    def icon(self) -> QIcon:
        return QIcon(ICON)

    def svgIconPath(self) -> str:  # noqa: N802
        return ICON

    def loadAlgorithms(self) -> None:  # noqa: N802
        for alg in (CoregisterAlgorithm(), MatchAlgorithm(), ApplyAlgorithm()):
            self.addAlgorithm(alg)
