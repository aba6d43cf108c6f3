"""A geometric correction: what to apply to the target to make it line up with the reference.

``model`` maps a *reference* pixel position to the *target* pixel position showing the same ground
(``tgt_xy = model(ref_xy)``, both in each raster's own original pixel grid). ``grid`` says where the
corrected raster goes: onto the reference grid, or kept on a grid of the target's own resolution/CRS.
The correction is independent of the pixels, so it can be saved, edited and applied to other rasters
that share the target's grid (other bands, other dates of the same scene...).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from .errors import InputError, OutputError
from .geometry.transforms import Transform, model_name, transform_from_dict
from .io.output import atomic_path
from .io.raster import RasterGrid

FORMAT = "hsscl-correction"
VERSION = 1
GRIDS = ("reference", "target")


@dataclass(frozen=True)
class Correction:
    """Reference grid, target grid, model (reference pixel -> target pixel) and output grid choice."""

    reference: RasterGrid
    target: RasterGrid
    model: Transform
    grid: str = "reference"

    def __post_init__(self) -> None:
        if self.grid not in GRIDS:
            raise InputError(f"Unknown output grid '{self.grid}'.", "Use 'reference' or 'target'.")

    @property
    def model_name(self) -> str:
        return model_name(self.model)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "grid": self.grid,
                "reference": self.reference.to_dict(), "target": self.target.to_dict(),
                "model": self.model.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Correction:
        return cls(RasterGrid.from_dict(d["reference"]), RasterGrid.from_dict(d["target"]),
                   transform_from_dict(d["model"]), str(d.get("grid", "reference")))

    def save(self, path: str | os.PathLike) -> str:
        """Write the correction as JSON (atomically); returns the path."""
        try:
            with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.to_dict(), f, indent=1)
        except OSError as exc:
            raise OutputError(f"Cannot write the correction '{os.fspath(path)}'.",
                              "Check that the folder exists and is writable.", str(exc)) from exc
        return os.fspath(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Correction:
        """Read a correction written by :meth:`save`; :class:`InputError` if it is missing or invalid."""
        p = os.fspath(path)
        try:
            with open(p, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError as exc:
            raise InputError(f"Correction file not found: '{p}'.",
                             "Give the correction.json written by a co-registration run.") from exc
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"'{p}' is not a readable correction file (not JSON).",
                             "Give the correction.json written by a co-registration run.", str(exc)) from exc
        if not isinstance(d, dict) or d.get("format", FORMAT) != FORMAT:
            raise InputError(f"'{p}' is not an HSSCL correction file.",
                             "Give the correction.json written by a co-registration run.")
        if int(d.get("version", VERSION)) > VERSION:
            raise InputError(f"'{p}' was written by a newer version of HSSCL Co-register.",
                             "Update the plugin to read it.")
        try:
            return cls.from_dict(d)
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"The correction file '{p}' is incomplete or damaged.",
                             "Run the co-registration again to write a new one.", repr(exc)) from exc
