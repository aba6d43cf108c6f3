"""Tie points: matched positions in the reference and target pixel grids, with their quality."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TiePoints:
    """Shapes: ref_xy, tgt_xy (N, 2) pixel positions (x, y), (0, 0) = top-left corner; others (N,)."""

    ref_xy: np.ndarray
    tgt_xy: np.ndarray
    score: np.ndarray
    inlier: np.ndarray        # bool: consistent with the fitted model
    check: np.ndarray         # bool: held out of the fit to measure the check RMSE
    residual_px: np.ndarray   # distance to the model, reference pixels

    def __len__(self) -> int:
        return len(self.ref_xy)

    @property
    def n_inliers(self) -> int:
        return int(self.inlier.sum())

    def as_table(self) -> dict[str, np.ndarray]:
        return {"ref_x": self.ref_xy[:, 0], "ref_y": self.ref_xy[:, 1], "tgt_x": self.tgt_xy[:, 0],
                "tgt_y": self.tgt_xy[:, 1], "score": self.score, "residual_px": self.residual_px,
                "inlier": self.inlier.astype(np.int32), "check": self.check.astype(np.int32)}

    def write_csv(self, path: str | os.PathLike) -> None:
        """Columns a_x, a_y, b_x, b_y, score, inlier (a = reference/first image, b = target/second)."""
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["a_x", "a_y", "b_x", "b_y", "score", "inlier"])
            for i in range(len(self)):
                w.writerow([f"{self.ref_xy[i, 0]:.4f}", f"{self.ref_xy[i, 1]:.4f}", f"{self.tgt_xy[i, 0]:.4f}",
                            f"{self.tgt_xy[i, 1]:.4f}", f"{self.score[i]:.4f}", int(self.inlier[i])])
