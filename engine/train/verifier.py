"""Fit the verify stage's confidence (:mod:`engine.matching.verify`), self-supervised on the training pairs.

Each sample is a crop of a co-registered training pair (the redistributable sources of the training cache,
the benchmark's held-out locations excluded) whose partner is warped by a known random misregistration
(shift up to 15 % of the crop, rotation up to 10°, scale up to 10 %, a little shear), or, for a share of
the samples, replaced by a crop of another location (unrelated ground: every answer is wrong). The matcher
runs with the decision off; every hypothesis it judges gives the *candidate* head an example (its pass-1
affine within 3 px of the known warp or not) and the winner gives the *final* head one. Two L2-regularised
logistic regressions are fitted; out-of-fold predictions (folds by location) give the reliability table,
the Brier score and the default threshold (the lowest confidence at which answers more than 5 px off stay
under 1 in 60 of all samples).

    .venv/bin/python -m hsscl.engine.train.verifier --samples 400 --out resources/models/verifier-0.1.0.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..matching.verify import HEURISTIC, Evidence, Head, features

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "hsscl_cpu_2h.json"   # its exclude_keys: the held-out benchmark's locations
FEATURES = {h: tuple(features(Evidence(10, 5, 0.5, 0.1, 0.5, -3.0, 0.5, 0.1, 1.0, 0.1, 0.5, 10, 1.0), h))
            for h in ("candidate", "final")}


def _affine_error(model, H: np.ndarray, size: int) -> float:
    """RMSE over the crop between ``model`` (crop a px -> crop b px) and the true mapping ``H`` (2x3)."""
    g = (np.stack(np.meshgrid(np.linspace(0.1, 0.9, 9), np.linspace(0.1, 0.9, 9)), -1).reshape(-1, 2)) * size
    t = g @ H[:, :2].T + H[:, 2]
    return float(np.sqrt(np.mean(np.sum((model(g) - t) ** 2, 1))))


def collect(samples: int, seed: int = 0, negatives: float = 0.15, second_share: float = 0.3,
            cache_path: str | Path = ROOT / ".traincache" / "hsscl_pairs.npz", log=print) -> list[dict]:
    """Run the matcher on ``samples`` misregistered training crops; one record per sample."""
    from ..descriptors.base import get_descriptor
    from ..errors import HSSCLError
    from ..matching.matcher import MatchSettings, match_pair
    from .data import PairCache, WarpRange

    exclude = json.loads(CONFIG.read_text()).get("exclude_keys", [])
    cache = PairCache(cache_path, split="all", exclude=exclude, residuals=True)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    cfog = get_descriptor("cfog")
    lcfog = get_descriptor("learned-cfog")
    out: list[dict] = []
    t0 = time.perf_counter()
    for i in range(samples):
        k = int(torch.multinomial(cache.weights, 1, generator=gen))
        ia = int(cache.pairs[k][0])
        h, w = cache.images[ia].shape[-2:]
        size = int(min(512, max(128, min(h, w) / 1.15 // 16 * 16)))
        warp = WarpRange(rotation_deg=10.0, log_scale=0.1, shear=0.02, shift_px=0.15 * size)
        b = cache.sample(1, size, gen, warp=warp, index=[k])
        negative = bool(rng.random() < negatives)
        if negative:  # the partner from another location: unrelated ground
            others = [j for j in range(len(cache.pairs)) if cache.keys[j] != cache.keys[k]]
            j = others[int(rng.integers(len(others)))]
            o = cache.sample(1, size, gen, warp=warp, index=[j])
            b.b, b.vb = o.b, o.vb
        use_second = bool(rng.random() < second_share)
        desc = lcfog if use_second else cfog
        settings = MatchSettings(max_shift_px=max(0.15 * size, 40.0) + 8, seed=i, stop_confidence=2.0)
        H = b.H[0].double().numpy()
        rec = {"i": i, "key": str(cache.keys[k]), "kind": str(cache.kinds[k]), "size": size,
               "negative": negative, "descriptor": desc.name, "error": None, "candidates": []}
        try:
            res = match_pair(b.a, b.va, b.b, b.vb, desc, settings, verifier=HEURISTIC)
        except HSSCLError as err:
            rec["refused"] = str(err)
            out.append(rec)
            continue
        from ..geometry.transforms import Affine

        ok = res.inlier
        aff = Affine.fit(res.matches.ref_xy[ok], res.matches.mov_xy[ok])
        rec["error"] = math.inf if negative else _affine_error(aff, H, size)
        rec["final"] = features(res.verdict.evidence, "final")
        for v, model in res.judged:
            err = math.inf if negative else _affine_error(model, H, size)
            rec["candidates"].append({"error": err, "features": features(v.evidence, "candidate")})
        out.append(rec)
        if (i + 1) % 10 == 0:
            ok_n = sum(1 for r in out if r["error"] is not None and r["error"] <= 3)
            log(f"[verifier] {i + 1}/{samples} samples, {ok_n} within 3 px, {time.perf_counter() - t0:.0f} s")
    return out


def _fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    from scipy.optimize import minimize

    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd

    def loss(wb):
        w, b = wb[:-1], wb[-1]
        z = Z @ w + b
        ll = np.logaddexp(0, z) - y * z
        g = 1 / (1 + np.exp(-z)) - y
        return ll.sum() + 0.5 * l2 * w @ w, np.append(Z.T @ g + l2 * w, g.sum())

    r = minimize(loss, np.zeros(X.shape[1] + 1), jac=True, method="L-BFGS-B")
    return r.x[:-1], float(r.x[-1]), mu, sd


def _predict(X, w, b, mu, sd) -> np.ndarray:
    return 1 / (1 + np.exp(-(((X - mu) / sd) @ w + b)))


def reliability(p: np.ndarray, y: np.ndarray, bins=(0, 0.2, 0.4, 0.6, 0.8, 1.0001)) -> list[dict]:
    rows = []
    for lo, hi in zip(bins[:-1], bins[1:]):
        m = (p >= lo) & (p < hi)
        rows.append({"bin": f"{lo:.1f}-{min(hi, 1):.1f}", "n": int(m.sum()),
                     "mean_confidence": round(float(p[m].mean()), 3) if m.any() else None,
                     "observed": round(float(y[m].mean()), 3) if m.any() else None})
    return rows


def fit(records: list[dict], folds: int = 5, seed: int = 0) -> dict:
    """Both heads from ``records`` (:func:`collect`), with out-of-fold calibration figures."""
    keys = sorted({r["key"] for r in records})
    rng = np.random.default_rng(seed)
    fold_of = {k: int(f) for k, f in zip(keys, rng.permutation(len(keys)) % folds)}
    result: dict = {}
    for head in ("candidate", "final"):
        names = FEATURES[head]
        rows = []
        for r in records:
            if head == "final" and r.get("final") is not None:
                rows.append((r["final"], r["error"], r["key"]))
            elif head == "candidate":
                rows += [(c["features"], c["error"], r["key"]) for c in r["candidates"]]
        X = np.array([[f[n] for n in names] for f, _, _ in rows], float)
        err = np.array([e for _, e, _ in rows], float)
        y = (err <= 3.0).astype(float)
        fo = np.array([fold_of[k] for _, _, k in rows])
        oof = np.zeros(len(y))
        for f in range(folds):
            tr, te = fo != f, fo == f
            if te.any() and len(np.unique(y[tr])) == 2:
                w, b, mu, sd = _fit_logistic(X[tr], y[tr])
                oof[te] = _predict(X[te], w, b, mu, sd)
        w, b, mu, sd = _fit_logistic(X, y)
        result[head] = {"head": Head(names, tuple(map(float, mu)), tuple(map(float, sd)), tuple(map(float, w)), b),
                        "oof": oof, "y": y, "err": err}
    # the default threshold: the lowest confidence at which accepted answers more than 5 px off stay under 1 in
    # 60 of all samples (the "at most about 1 in 50", with a margin: these samples include unrelated
    # ground and 100 px crops, harder than most real pairs)
    p, err = result["final"]["oof"], result["final"]["err"]
    threshold = 0.5
    for t in np.arange(0.3, 0.96, 0.01):
        acc = p >= t
        if acc.sum() and (err[acc] > 5).sum() <= len(p) / 60:
            threshold = float(round(t, 2))
            break
    return {"heads": result, "threshold": threshold}


def summary(fitted: dict) -> dict:
    out = {}
    for head, r in fitted["heads"].items():
        p, y, err = r["oof"], r["y"], r["err"]
        auc = _auc(p, y)
        out[head] = {"examples": int(len(y)), "positives": int(y.sum()), "brier_oof": round(float(np.mean((p - y) ** 2)), 4),
                     "auc_oof": round(auc, 4), "reliability_oof": reliability(p, y)}
    p, err = fitted["heads"]["final"]["oof"], fitted["heads"]["final"]["err"]
    t = fitted["threshold"]
    acc = p >= t
    out["at_threshold"] = {"threshold": t, "accepted": int(acc.sum()), "of": int(len(p)),
                           "accepted_within_3px": int((err[acc] <= 3).sum()),
                           "accepted_3_5px": int(((err[acc] > 3) & (err[acc] <= 5)).sum()),
                           "accepted_over_5px": int((err[acc] > 5).sum()),
                           "refused_but_within_3px": int((err[~acc] <= 3).sum())}
    return out


def _auc(p: np.ndarray, y: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    from scipy.stats import rankdata

    r = rankdata(np.concatenate([pos, neg]))
    return float((r[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Fit the verify stage's confidence on the training pairs.")
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--records", nargs="+", help="reuse records (JSON files) written by earlier runs instead of "
                    "matching again (several: their union, e.g. runs with different seeds)")
    ap.add_argument("--save-records", help="write the collected records (JSON) here")
    ap.add_argument("--out", default=str(ROOT / "resources" / "models" / "verifier-0.1.0.json"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--publish", action="store_true", help="name the written file in the model registry")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    if a.records:
        records = [r for f in a.records for r in json.loads(Path(f).read_text())]
        for r in records:  # records of runs with other seeds: keep their sample ids distinct
            r.setdefault("run", 0)
    else:
        records = collect(a.samples, a.seed)
        if a.save_records:
            Path(a.save_records).write_text(json.dumps(records, default=float))
    fitted = fit(records)
    summ = summary(fitted)
    doc = {"name": "verifier-0.1.0", "format": 1, "threshold": fitted["threshold"],
           "candidate": fitted["heads"]["candidate"]["head"].to_dict(),
           "final": fitted["heads"]["final"]["head"].to_dict(),
           "training": {"samples": len(records), "seed": a.seed, "data": "training cache (redistributable pairs; "
                        "held-out benchmark locations excluded: configs/hsscl_cpu_2h.json exclude_keys)",
                        "misregistration": "shift <= 15 % of the crop, rotation <= 10 deg, scale <= 10 %, shear "
                        "<= 0.02; 15 % unrelated-ground negatives; 30 % matched with learned-cfog",
                        "seconds": round(time.perf_counter() - t0, 1)},
           "calibration_out_of_fold": summ}
    Path(a.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps(summ, indent=1))
    print(f"wrote {a.out}")
    if a.publish:
        publish(a.out, doc)
    return 0


def publish(path: str | Path, doc: dict) -> None:
    """Name the verifier file ``path`` (already in resources/models) in the model registry with its sha256."""
    from ..network.registry import REGISTRY, read_registry, sha256

    p = Path(path)
    reg = read_registry()
    reg.setdefault("models", {})["verifier"] = {
        "name": "verifier", "version": doc["name"].rsplit("-", 1)[-1], "file": p.name, "sha256": sha256(p),
        "bytes": p.stat().st_size, "format": "hsscl-verifier-1",
        "recipe": "python -m hsscl.engine.train.verifier --samples N --seed S (make train-verifier)",
        "data": doc["training"]["data"], "training": doc["training"],
        "calibration_out_of_fold": {k: {kk: vv for kk, vv in v.items() if kk != "reliability_oof"}
                                    if isinstance(v, dict) else v
                                    for k, v in doc["calibration_out_of_fold"].items()},
    }
    REGISTRY.write_text(json.dumps(reg, indent=2) + "\n")
    print(f"registered {p.name} in {REGISTRY}")


if __name__ == "__main__":
    sys.exit(main())
