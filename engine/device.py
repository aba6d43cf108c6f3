"""Compute device choice (auto / cpu / cuda) with a clear fallback message."""
from __future__ import annotations

import torch


def resolve_device(requested: str = "auto") -> tuple[torch.device, str | None]:
    """Return the device to use and, when the request could not be honoured, a message saying why.

    ``requested``: ``auto`` (CUDA when usable), ``cpu``, ``cuda`` or ``cuda:N`` (a given GPU)."""
    if requested == "cpu":
        return torch.device("cpu"), None
    if torch.cuda.is_available():
        return torch.device(requested if requested.startswith("cuda:") else "cuda"), None
    if requested.startswith("cuda"):
        return torch.device("cpu"), ("CUDA was requested but no usable NVIDIA GPU/driver was found by torch; "
                                     "running on the CPU instead (slower, same results).")
    return torch.device("cpu"), None


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(max(1, int(threads)))
