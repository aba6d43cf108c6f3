"""Train and evaluate the match-graph network (CPU, seeded). See resources/models/README.md ("graph").

Usage:
    .venv/bin/python scripts/train_graph.py data  [--graphs 260]      # training graphs from the train cache
    .venv/bin/python scripts/train_graph.py fit   [--epochs 80]       # -> resources/models/graph-0.1.0.safetensors
    .venv/bin/python scripts/train_graph.py eval  [--cases 20]        # graph off vs on, held-out bench cases

``eval`` reads the benchmark cases written by ``python -m bench.cases`` (.bench/cases) and uses only those
from evaluation-only sources (CFOG, MMIM, SRIF, OSMNet), none of which is in the training data.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EVAL_PREFIXES = ("cfog_", "mmim_", "srif_", "osmnet_")


def _cases(n: int, skip: int = 0) -> list[dict]:
    d = ROOT / ".bench" / "cases"
    metas = [json.loads(p.read_text()) for p in sorted(d.glob("*/case.json"))]
    metas = [m for m in metas if m["id"].startswith(EVAL_PREFIXES)]
    # spread over families and sources: round-robin by source prefix
    groups: dict[str, list[dict]] = {}
    for m in metas:
        groups.setdefault(m["id"].split("_")[0] + m["family"], []).append(m)
    out: list[dict] = []
    while len(out) < n + skip and any(groups.values()):
        for k in sorted(groups):
            if groups[k] and len(out) < n + skip:
                out.append(groups[k].pop(0))
    return out[skip:]


def true_errors(case: dict, model) -> np.ndarray:
    """|M(T(q)) - q| at check positions q (every 8th pixel centre of the overlap), reference pixels."""
    mask = np.load(case["eval_mask"])
    ys, xs = np.nonzero(mask[4::8, 4::8])
    q = np.stack([xs * 8 + 4.5, ys * 8 + 4.5], 1)
    M = np.array(case["M_target_to_reference"])
    t = model(q)
    back = (np.c_[t, np.ones(len(t))] @ M.T)
    back = back[:, :2] / back[:, 2:]
    return np.linalg.norm(back - q, axis=1)


def evaluate_cases(n: int, skip: int = 0, modes=("off", "on"), log=print) -> dict:
    from hsscl.engine.config import CoregConfig
    from hsscl.engine.errors import HSSCLError
    from hsscl.engine.pipeline import estimate

    rows = []
    for case in _cases(n, skip):
        row: dict = {"id": case["id"], "family": case["family"]}
        for mode in modes:
            from hsscl.engine.graph import refine

            refine.APPLY_SHIFT = mode != "prune-only"          # ablation: prune + prior, no position shift
            cfg = CoregConfig(graph="on" if mode == "prune-only" else mode, threads=1)
            t = time.perf_counter()
            try:
                est = estimate(case["reference"], case["target"], cfg)
                e = true_errors(case, est.correction.model)
                g = est.report.get("graph", {})
                row[mode] = {"rmse": float(np.sqrt(np.mean(e ** 2))), "median": float(np.median(e)),
                             "within1": float(np.mean(e <= 1)), "within3": float(np.mean(e <= 3)),
                             "model": est.report["model"]["kind"], "tiepoints": len(est.tiepoints),
                             "inliers": est.tiepoints.n_inliers, "graph": g,
                             "seconds": round(time.perf_counter() - t, 2)}
            except HSSCLError as exc:
                row[mode] = {"refused": type(exc).__name__, "message": exc.message, "rmse": float("inf")}
        rows.append(row)
        log(json.dumps({"id": row["id"], **{m: {k: (round(v, 3) if isinstance(v, float) else v)
                                               for k, v in row[m].items() if k in ("rmse", "refused", "tiepoints",
                                                                                  "inliers", "seconds")}
                                           for m in modes}}))
    summary = {}
    for mode in modes:
        r = np.array([row[mode]["rmse"] for row in rows])
        summary[mode] = {"cases": len(rows), "rmse_le_1px": float(np.mean(r <= 1)), "rmse_le_3px": float(np.mean(r <= 3)),
                         "median_rmse": float(np.median(r)), "mean_rmse_completed": float(np.mean(r[np.isfinite(r)])),
                         "refused": int(np.sum(~np.isfinite(r)))}
    both = [row for row in rows if all(np.isfinite(row[m]["rmse"]) for m in modes)]
    if len(modes) == 2 and both:
        d = np.array([row[modes[1]]["rmse"] - row[modes[0]]["rmse"] for row in both])
        summary["paired"] = {"cases": len(both), "better": int(np.sum(d < -0.05)), "worse": int(np.sum(d > 0.05)),
                             "median_change_px": float(np.median(d)), "mean_change_px": float(np.mean(d))}
    log(json.dumps(summary, indent=1))
    return {"summary": summary, "rows": rows}


def register(weights: Path, version: str = "0.1.0") -> dict:
    """Write (only) the "graph" entry of resources/models/registry.json from the weights and their train log."""
    from hsscl.engine.graph.weights import GRAPH_MODEL
    from hsscl.engine.network.registry import REGISTRY, sha256

    log = json.loads(Path(str(weights) + ".train_log.json").read_text())["result"]
    entry = {"name": GRAPH_MODEL, "version": version, "file": weights.name, "sha256": sha256(weights),
             "bytes": weights.stat().st_size, "parameters": log["parameters"], "format": "hsscl-graph-1",
             "recipe": "scripts/train_graph.py data (seeds 0 and 1) + fit; see README.md, section 'Match graph'",
             "trained": {"epochs": log["epochs"], "seconds": log["seconds"], "device": "cpu (1 thread)",
                         "graphs_train": log["graphs_train"], "graphs_val": log["graphs_val"]},
             "data": log["samples"], "validation": log["validation"]}
    reg = json.loads(REGISTRY.read_text())
    reg["models"][GRAPH_MODEL] = entry
    REGISTRY.write_text(json.dumps(reg, indent=2) + "\n")
    print(json.dumps(entry, indent=1))
    return entry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cmd", choices=("data", "fit", "register", "eval"))
    ap.add_argument("--graphs", type=int, default=260)
    ap.add_argument("--minutes", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=80)
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--skip", type=int, default=0, help="leave out the first SKIP cases (a second, disjoint set)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--modes", default="off,on", help="graph modes to compare: off, on, prune-only")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from hsscl.engine.graph import train as T

    samples = str(ROOT / ".traincache" / "graph_samples.npz")
    if a.cmd == "data":
        T.generate(str(ROOT / ".traincache" / "hsscl_pairs.npz"), a.out or samples, a.graphs, a.seed,
                   a.minutes or 15.0)
    elif a.cmd == "fit":
        files = sorted(str(p) for p in (ROOT / ".traincache").glob("graph_samples*.npz"))
        T.fit(files, a.out or str(ROOT / "resources" / "models" / "graph-0.1.0.safetensors"), a.epochs, a.seed,
              a.minutes or 30.0)
    elif a.cmd == "register":
        register(Path(a.out or ROOT / "resources" / "models" / "graph-0.1.0.safetensors"))
    else:
        res = evaluate_cases(a.cases, a.skip, tuple(a.modes.split(",")))
        out = Path(a.out or ROOT / ".traincache" / "graph_eval.json")
        out.write_text(json.dumps(res, indent=1, default=str))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
