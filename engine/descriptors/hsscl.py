"""The HSSCL network as a DenseDescriptor: one dense, L2-normalised map at input resolution.

The fine (stride 2), mid (stride 8) and coarse (stride 16) descriptors are weighted, concatenated on
the stride-2 grid, upsampled once to the input size and re-normalised, so the engine's coarse-to-fine
matcher (masked ZNCC of descriptor fields) uses it unchanged. Inputs are padded to a multiple of 16
(replicate) and the output cropped back; invalid pixels are zero in the output, as with CFOG.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..network.model import LEVELS, HSSCLNet
from ..network.registry import DEFAULT_MODEL, load_registered, load_weights


class HSSCLDescriptor:
    """Shapes: images (B, 1, H, W) float, valid (B, 1, H, W) bool or None -> (B, C, H, W)."""

    name = "hsscl"

    def __init__(self, model: HSSCLNet, device: str | torch.device = "cpu", modality: str | None = None,
                 info: dict | None = None, levels: tuple[str, ...] = LEVELS) -> None:
        unknown = set(levels) - set(LEVELS)
        if unknown or not levels:
            raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {levels}")
        self.levels = tuple(levels)
        if self.levels != LEVELS:
            self.name = "hsscl-" + "+".join(self.levels)
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.modality = modality
        self.info = info or {}

    @classmethod
    def from_weights(cls, weights: str | Path | None = None, device: str = "cpu",
                     levels: tuple[str, ...] = LEVELS) -> HSSCLDescriptor:
        """The shipped model (registry, sha256-checked) or the safetensors file ``weights``."""
        if weights:
            return cls(load_weights(weights, device=device), device, info={"weights": str(weights)}, levels=levels)
        model, entry = load_registered(DEFAULT_MODEL, device=device)
        return cls(model, device, info={"weights": entry["file"], "version": entry.get("version")}, levels=levels)

    @property
    def channels(self) -> int:
        return sum(self.model.config.dims)

    def _level_weights(self) -> tuple[float, float, float] | None:
        if self.levels == LEVELS:
            return None
        w = self.model.config.weights
        return tuple(wi if k in self.levels else 0.0 for wi, k in zip(w, LEVELS))  # type: ignore[return-value]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, H, W), got {tuple(images.shape)}")
        H, W = images.shape[-2:]
        m = self.model.pad_multiple
        ph, pw = (-H) % m, (-W) % m
        x = images.float().to(self.device)
        if valid is not None:
            x = x * valid.to(x.device).float()
        x = F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
        mod = None
        if self.modality is not None:
            from ..network.stems import modality_ids

            mod = modality_ids([self.modality] * x.shape[0], x.device)
        d = self.model.dense(self.model(x, mod), (H + ph, W + pw), self._level_weights())[:, :, :H, :W]
        if valid is not None:
            v = valid.to(d.device).float()
            v = -F.max_pool2d(-v, 5, stride=1, padding=2)  # features next to invalid pixels see the fill value
            d = d * v
        return d.to(images.device)
