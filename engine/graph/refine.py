"""Between matching and robust fitting: prune, refine and weight the candidate matches with the graph network.

``graph_refine(mode, matches, ...)`` returns the matches to fit (low inlier probability pruned, moving
positions refined by at most the network's bound) with ``score`` replaced by the inlier probability (the
MAGSAC prior of :func:`engine.fitting.fit_correction`), and a report entry. It never fails the run for
a missing optional dependency: without torch-geometric, or with ``auto`` when the graph is not
enabled, the matches pass unchanged and the report says why. Broken shipped weights raise WeightsError
with ``on`` and fall back (noted) with ``auto``.
"""
from __future__ import annotations

import importlib
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import WeightsError
from ..matching.fine import FineMatches

#: ``auto`` means off: on 40 held-out evaluation pairs the graph did not clearly improve the final error
#: (better on 15, worse on 10; on the 13 pairs with tight truth 3 better, 4 worse; resources/models/README.md,
#: "Match graph"); ``on`` uses it.
AUTO_ENABLED = False
MIN_NODES = 12          # fewer candidates: nothing to gain, leave them to the robust fit
KEEP_PROB = 0.5         # prune below this inlier probability ...
MIN_KEEP = 16           # ... but keep at least this many (best first) ...
MIN_KEEP_SHARE = 0.3    # ... and this share of the candidates, so the fit still has evidence
APPLY_SHIFT = True      # apply the predicted refinement (False: prune + prior only; an ablation)


def available() -> tuple[bool, str]:
    """Whether torch-geometric can be imported (and why not)."""
    try:
        importlib.import_module("torch_geometric")
    except ImportError as exc:
        return False, f"torch-geometric is not installed ({exc}); install it to use the graph refinement"
    return True, ""


def _skip(reason: str, n: int, t0: float) -> dict[str, Any]:
    return {"used": False, "reason": reason, "nodes_in": n, "nodes_out": n,
            "seconds": round(time.perf_counter() - t0, 3)}


def graph_refine(mode: str, fm: FineMatches, inlier: np.ndarray | None, ref: torch.Tensor, ref_valid: torch.Tensor,
                 mov: torch.Tensor, mov_valid: torch.Tensor, descriptor, registry: str | Path | None = None
                 ) -> tuple[FineMatches, dict[str, Any]]:
    """Apply the graph network to the pass-2 matches ``fm`` (reference px, moving px of these images).

    Shapes: ref, mov (1, 1, H, W) float (the matcher's inputs), masks alike (bool); inlier (N,) bool or None.
    """
    t0 = time.perf_counter()
    n = len(fm)
    if mode == "off":
        return fm, _skip("off (asked for)", n, t0)
    if mode == "auto" and not AUTO_ENABLED:
        return fm, _skip("auto = off: on held-out evaluation pairs the graph did not clearly improve the final "
                         "error (use --graph on to apply it)", n, t0)
    ok, why = available()
    if not ok:
        return fm, _skip(why, n, t0)
    name = getattr(descriptor, "name", "")
    if mode == "auto" and name != "cfog":
        return fm, _skip(f"trained on CFOG matches; the '{name}' descriptor is not supported in auto mode", n, t0)
    if n < MIN_NODES:
        return fm, _skip(f"only {n} candidates (at least {MIN_NODES} needed)", n, t0)
    from ..network.registry import REGISTRY
    from .features import build_graph
    from .weights import load_registered_graph

    try:
        model, entry = load_registered_graph(registry or REGISTRY)
    except WeightsError as exc:
        if mode == "on":
            raise
        return fm, _skip(f"weights unusable: {exc.message}", n, t0)
    t1 = time.perf_counter()
    # the graph is small: features and network run on the CPU whatever device the matcher used
    ref, ref_valid, mov, mov_valid = (t.cpu() for t in (ref, ref_valid, mov, mov_valid))
    g = build_graph(fm, inlier, ref, ref_valid, mov, mov_valid, descriptor)
    with torch.no_grad():
        logit, delta = model(g.x, g.edge_index, g.edge_attr)
    p = torch.sigmoid(logit).double().numpy()
    d = delta.double().numpy()
    n_min = min(n, max(MIN_KEEP, int(math.ceil(MIN_KEEP_SHARE * n))))
    keep = p >= KEEP_PROB
    if keep.sum() < n_min:
        keep = np.zeros(n, bool)
        keep[np.argsort(-p, kind="stable")[:n_min]] = True
    if not APPLY_SHIFT:
        d = np.zeros_like(d)
    out = FineMatches(fm.ref_xy[keep], fm.mov_xy[keep] + d[keep], np.clip(p[keep], 0.05, 1.0), fm.distinct[keep],
                      fm.n_windows)
    report = {"used": True, "reason": f"graph network {entry.get('version', '?')} ({mode})",
              "nodes_in": n, "nodes_out": int(keep.sum()), "edges": int(g.edge_index.shape[1]),
              "mean_inlier_prob": round(float(p.mean()), 3),
              "mean_shift_px": round(float(np.linalg.norm(d[keep], axis=1).mean()), 3),
              "prior": "inlier probability", "seconds": round(time.perf_counter() - t1, 3),
              "setup_seconds": round(t1 - t0, 3)}
    return out, report
