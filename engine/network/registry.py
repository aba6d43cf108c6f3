"""Shipped weights: safetensors files named in a registry JSON (name, version, sha256, recipe, data).

Weights are data: they are loaded with :mod:`safetensors` (never unpickled), their sha256 is checked
against the registry, and every problem (missing file, wrong checksum, unreadable file, tensors that
do not fit the network) raises :class:`engine.errors.WeightsError` with what to do next.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError
from .model import HSSCLNet, NetConfig

MODELS_DIR = Path(__file__).resolve().parents[2] / "resources" / "models"
REGISTRY = MODELS_DIR / "registry.json"
DEFAULT_MODEL = "hsscl"


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_registry(path: str | Path = REGISTRY) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise WeightsError(f"The model registry '{path}' is missing.",
                           "Reinstall the plugin, or give network weights with --weights.") from exc
    except (OSError, ValueError) as exc:
        raise WeightsError(f"The model registry '{path}' cannot be read.", "Reinstall the plugin.", str(exc)) from exc


def registry_entry(name: str = DEFAULT_MODEL, path: str | Path = REGISTRY) -> dict[str, Any]:
    reg = read_registry(path)
    models = reg.get("models", {})
    if name not in models:
        raise WeightsError(f"No network weights named '{name}' in the registry.",
                           f"Known: {', '.join(sorted(models)) or 'none'}; or give a file with --weights.")
    return models[name]


def save_weights(model: HSSCLNet, path: str | Path, metadata: dict[str, Any] | None = None) -> str:
    """Write ``model``'s state (float32) and its NetConfig to a safetensors file; return its sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()
             if v.dtype.is_floating_point}
    meta = {"net_config": json.dumps(model.config.to_dict()), "format": "hsscl-net-1"}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return sha256(path)


def read_safetensors(path: Path, expected_sha256: str | None, what: str, hints: tuple[str, str, str]
                     ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a safetensors file (never unpickled), checked: WeightsError when the file
    is missing, its sha256 differs from ``expected_sha256``, or it cannot be read. ``what`` names the
    weights in messages; ``hints`` says what to do in those three cases."""
    if not path.is_file():
        raise WeightsError(f"{what[0].upper()}{what[1:]} not found: '{path}'.", hints[0])
    if expected_sha256 is not None:
        got = sha256(path)
        if got != expected_sha256:
            raise WeightsError(f"The {what} '{path.name}' are corrupt (checksum mismatch).", hints[1],
                               f"sha256 {got}, expected {expected_sha256}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}), {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged header/body
        raise WeightsError(f"'{path.name}' is not a readable safetensors weights file.", hints[2],
                           str(exc)) from exc


def load_weights(path: str | Path, expected_sha256: str | None = None, device: str | torch.device = "cpu"
                 ) -> HSSCLNet:
    """Build the network described in the file's metadata and load its tensors (eval mode).

    Raises WeightsError on a missing file, a checksum mismatch, an unreadable file or tensors that do
    not fit the network.
    """
    p = Path(path)
    meta, state = read_safetensors(p, expected_sha256, "network weights",
                                   ("Check the path, or use the shipped weights (no --weights).",
                                    "Reinstall the plugin or download the weights again.",
                                    "Give the .safetensors file written by 'hsscl train'."))
    if meta.get("format") != "hsscl-net-1" or "net_config" not in meta:
        raise WeightsError(f"'{p.name}' does not hold HSSCL network weights.",
                           "Give the .safetensors file written by 'hsscl train'.")
    try:
        model = HSSCLNet(NetConfig.from_dict(json.loads(meta["net_config"])))
        missing, unexpected = model.load_state_dict(state, strict=False)
        # BatchNorm's integer step counters are not stored; anything else missing is an error
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(f"missing {missing[:5]}, unexpected {list(unexpected)[:5]}")
    except (ValueError, RuntimeError, TypeError) as exc:
        raise WeightsError(f"The weights in '{p.name}' do not fit the HSSCL network.",
                           "Use weights written by this version of 'hsscl train'.", str(exc)) from exc
    return model.eval().to(device)


def load_registered(name: str = DEFAULT_MODEL, registry: str | Path = REGISTRY,
                    device: str | torch.device = "cpu") -> tuple[HSSCLNet, dict[str, Any]]:
    """The registered model ``name`` (file next to the registry, sha256 checked) and its entry."""
    entry = registry_entry(name, registry)
    path = Path(registry).parent / entry["file"]
    return load_weights(path, entry.get("sha256"), device), entry
