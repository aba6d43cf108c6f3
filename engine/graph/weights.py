"""Weights of the match-graph network: a safetensors file named in the model registry (sha256 checked).

Loaded with :mod:`safetensors` only (never unpickled); every problem raises
:class:`engine.errors.WeightsError` with what to do next.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import WeightsError
from ..network.registry import REGISTRY, read_safetensors, registry_entry, sha256

GRAPH_MODEL = "graph"
FORMAT = "hsscl-graph-1"


def save_graph_weights(model, path: str | Path, metadata: dict[str, Any] | None = None) -> str:
    """Write ``model``'s tensors and config to ``path`` (safetensors); return the file's sha256."""
    from safetensors.torch import save_file

    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": FORMAT, "config": model.config.to_json()}
    meta.update({k: str(v) for k, v in (metadata or {}).items()})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return sha256(path)


def load_graph_weights(path: str | Path, expected_sha256: str | None = None):
    """The network stored in ``path`` (eval mode, CPU). WeightsError on a missing/corrupt/foreign file."""
    from .model import GraphNetConfig, MatchGraphNet

    p = Path(path)
    hint = "Reinstall the plugin, or run with --graph off."
    meta, state = read_safetensors(p, expected_sha256, "match-graph weights", (hint, hint, hint))
    if meta.get("format") != FORMAT or "config" not in meta:
        raise WeightsError(f"'{p.name}' does not hold match-graph weights.", "Reinstall the plugin.")
    try:
        model = MatchGraphNet(GraphNetConfig.from_json(meta["config"]))
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise WeightsError(f"The weights in '{p.name}' do not fit the match-graph network.",
                           "Reinstall the plugin, or run with --graph off.", str(exc)) from exc
    return model.eval()


def load_registered_graph(registry: str | Path = REGISTRY) -> tuple[Any, dict[str, Any]]:
    """The registered match-graph network (file next to the registry, sha256 checked) and its entry."""
    entry = registry_entry(GRAPH_MODEL, registry)
    path = Path(registry).parent / entry["file"]
    return load_graph_weights(path, entry.get("sha256")), entry
