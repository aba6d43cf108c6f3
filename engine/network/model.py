"""HSSCLNet: stem -> shared encoder -> three descriptor heads (fine s2, mid s8, coarse s16)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .encoder import Encoder
from .heads import DescriptorHead, FineHead, l2n
from .stems import UNKNOWN, ModalityStem

LEVELS = ("fine", "mid", "coarse")


@dataclass(frozen=True)
class NetConfig:
    stem: int = 16
    widths: tuple[int, int, int, int] = (24, 48, 64, 96)
    dims: tuple[int, int, int] = (8, 8, 8)          # descriptor channels: fine, mid, coarse
    weights: tuple[float, float, float] = (1.0, 0.7, 0.5)  # level weights in the dense (adapter) map

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> NetConfig:
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def strides(self) -> dict[str, int]:
        return {"fine": 2, "mid": 8, "coarse": 16}


class HSSCLNet(nn.Module):
    """Multi-level dense descriptors.

    Shapes:
        x: (B, 1, H, W) normalised single channel, H and W multiples of 16 (see :meth:`pad_multiple`)
        modality: (B,) long (``stems.MODALITIES`` ids) or None (= unknown)
        return: {"fine": (B, d0, H/2, W/2), "mid": (B, d1, H/8, W/8), "coarse": (B, d2, H/16, W/16)},
                each L2-normalised along channels
    """

    pad_multiple = 16

    def __init__(self, config: NetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or NetConfig()
        c1, c2, c3, c4 = config.widths
        self.stem = ModalityStem(config.stem)
        self.encoder = Encoder(config.stem, config.widths)
        self.fine = FineHead(c1, c2, config.dims[0])
        self.mid = DescriptorHead(c3, config.dims[1])
        self.coarse = DescriptorHead(c4, config.dims[2])

    def forward(self, x: torch.Tensor, modality: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"x must be (B, 1, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"H and W must be multiples of 16, got {tuple(x.shape[-2:])}")
        if modality is None:
            modality = torch.full((x.shape[0],), UNKNOWN, dtype=torch.long, device=x.device)
        f = self.encoder(self.stem(x, modality))
        return {"fine": self.fine(f[2], f[4]), "mid": self.mid(f[8]), "coarse": self.coarse(f[16])}

    def dense(self, levels: dict[str, torch.Tensor], size: tuple[int, int],
              weights: tuple[float, float, float] | None = None) -> torch.Tensor:
        """One dense map at ``size``: the levels, weighted, concatenated on the fine (stride-2) grid and
        upsampled once, then re-normalised. Shapes: levels as :meth:`forward` -> (B, sum(dims), *size).
        ``weights`` overrides the configured level weights (a zero weight drops a level: ablations)."""
        w = weights if weights is not None else self.config.weights
        fine = levels["fine"]
        h2, w2 = fine.shape[-2:]
        parts = [w[0] * fine] + [wi * F.interpolate(levels[k], size=(h2, w2), mode="bilinear", align_corners=False)
                                 for wi, k in zip(w[1:], LEVELS[1:])]
        x = torch.cat(parts, 1)
        if tuple(size) != (h2, w2):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return l2n(x)

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
