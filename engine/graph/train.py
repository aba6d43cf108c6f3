"""Self-supervised training of the match-graph network on the engine's own matches under known warps.

Data: the redistributable real pairs of the HSSCL training cache (``.traincache/hsscl_pairs.npz``, built
by ``scripts/build_traincache.py``; its train split only). For each sample a pair's second image is warped
by a random known affine ``T`` (reference px -> moving px), the engine matches the pair
(:func:`engine.matching.matcher.match_pair`, CFOG) and a random share of the pass-2 matches is replaced by
matches found under a deliberately wrong model (real matcher output at wrong places: hard outliers).
Labels: a node is an inlier when its moving position is within ``INLIER_PX`` of ``T(ref)`` (after removing
the pair's own constant misregistration, the median error of its close matches); the refinement target
is ``T(ref) - mov`` (clipped to the network's bound).

Usage (seeded, CPU, one thread)::

    python -m hsscl.engine.graph.train data --out .traincache/graph_samples.npz --graphs 260
    python -m hsscl.engine.graph.train fit --samples .traincache/graph_samples*.npz --epochs 80 \
        --out resources/models/graph-0.1.0.safetensors
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

from ..errors import NotEnoughMatchesError
from ..geometry.transforms import Affine
from ..matching.fine import FineMatches, fine_match, grid_centres
from ..matching.matcher import MatchSettings, _spacing, match_pair, template_size
from ..matching.sampling import pixel_grid, sample
from .features import build_graph, global_affine

INLIER_PX = 1.5
ROOT = Path(__file__).resolve().parents[2]


def random_affine(rng: np.random.Generator, w: int, h: int, max_shift: float = 20.0) -> Affine:
    """Similarity (±4°, ±5 %) plus a little shear and a shift of up to ``max_shift`` px, about the centre."""
    a = Affine.from_similarity(math.exp(rng.uniform(-0.05, 0.05)), rng.uniform(-4, 4), rng.uniform(-max_shift, max_shift),
                               rng.uniform(-max_shift, max_shift), (w / 2, h / 2))
    sh = rng.uniform(-0.02, 0.02, 2)
    s = Affine.from_array(np.array([[1, sh[0], -sh[0] * h / 2], [sh[1], 1, -sh[1] * w / 2]]))
    return a.compose(s)


def warp_image(img: torch.Tensor, valid: torch.Tensor, T: Affine) -> tuple[torch.Tensor, torch.Tensor]:
    """``out(q) = img(T^-1(q))`` on the same grid. Shapes: (1, 1, H, W) -> (1, 1, H, W)."""
    h, w = img.shape[-2:]
    g = pixel_grid(h, w, dtype=torch.float64).reshape(-1, 2).numpy()
    src = torch.tensor(T.inverse()(g), dtype=torch.float32).view(1, h, w, 2)
    return sample(img.float(), src), sample(valid.float(), src) > 0.99


def decoy_matches(ref_desc, ref_valid, mov, mov_valid, base: Affine, H: int, W: int, descriptor,
                  rng: np.random.Generator) -> FineMatches:
    """Pass-2-like matches under ``base`` shifted 9-20 px away: real matcher output, all wrong."""
    settings = MatchSettings()
    tpl2 = min(template_size(H, W, settings), 64)
    centres = grid_centres(W, H, tpl2, _spacing(H, W, tpl2, settings.max_points_pass2, max(8.0, tpl2 / 3)))
    ang = rng.uniform(0, 2 * np.pi)
    off = rng.uniform(9, 20)
    shift = Affine.from_array(np.array([[1, 0, off * np.cos(ang)], [0, 1, off * np.sin(ang)]]))
    return fine_match(ref_desc, ref_valid, mov, mov_valid, base.compose(shift), centres, tpl2, 6, descriptor)


def make_sample(ref, rv, mov0, mv0, rng: np.random.Generator, descriptor) -> dict | None:
    """One training graph (numpy arrays) from a co-registered pair (1, 1, H, W) tensors; None if matching fails."""
    H, W = ref.shape[-2:]
    T = random_affine(rng, W, H)
    mov, mv = warp_image(mov0, mv0, T)
    try:
        res = match_pair(ref, rv, mov, mv, descriptor, MatchSettings(max_shift_px=40.0, seed=int(rng.integers(1 << 30))))
    except NotEnoughMatchesError:
        return None
    fm, inl = res.matches, res.inlier.copy()
    n = len(fm)
    if n < 8:
        return None
    decoy = np.zeros(n, bool)
    frac = rng.choice([0.0, rng.uniform(0.05, 0.45)], p=[0.25, 0.75])
    if frac > 0:
        fd = decoy_matches(descriptor(ref, rv), rv, mov, mv, global_affine(fm, inl), H, W, descriptor, rng)
        # same reference positions: swap in the wrong match for a random share of them
        key = {(round(x, 1), round(y, 1)): i for i, (x, y) in enumerate(fd.ref_xy)}
        pick = np.flatnonzero(rng.random(n) < frac)
        ref_xy, mov_xy, sc, ds = fm.ref_xy.copy(), fm.mov_xy.copy(), fm.score.copy(), fm.distinct.copy()
        for i in pick:
            j = key.get((round(ref_xy[i, 0], 1), round(ref_xy[i, 1], 1)))
            if j is not None:
                mov_xy[i], sc[i], ds[i], decoy[i] = fd.mov_xy[j], fd.score[j], fd.distinct[j], True
        fm = FineMatches(ref_xy, mov_xy, sc, ds, fm.n_windows)
        inl &= ~decoy
    err = fm.mov_xy - T(fm.ref_xy)
    close = (np.linalg.norm(err, axis=1) < 3.0) & ~decoy
    bias = np.median(err[close], axis=0) if close.sum() >= 8 else np.zeros(2)
    err = err - bias
    g = build_graph(fm, inl if inl.sum() >= 3 else None, ref, rv, mov, mv, descriptor)
    return {"x": g.x.numpy(), "edge_index": g.edge_index.numpy(), "edge_attr": g.edge_attr.numpy(),
            "y": (np.linalg.norm(err, axis=1) < INLIER_PX).astype(np.float32),
            "delta": np.clip(-err, -1.0, 1.0).astype(np.float32), "err": np.linalg.norm(err, axis=1).astype(np.float32),
            "decoy": decoy, "bias": bias}


def generate(cache: str, out: str, graphs: int, seed: int = 0, minutes: float = 15.0, log=print) -> dict:
    """Draw ``graphs`` samples from the cache's train split (stop early after ``minutes``); save to ``out``."""
    from ..descriptors.cfog import CFOG
    from ..train.data import PairCache

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pc = PairCache(cache, "train")
    usable = [k for k, (a, _b) in enumerate(pc.pairs) if min(pc.images[int(a)].shape[-2:]) >= 200]
    descriptor = CFOG()
    samples: list[dict] = []
    srcs: list[str] = []
    t0 = time.perf_counter()
    tried = 0
    while len(samples) < graphs and time.perf_counter() - t0 < 60 * minutes:
        k = int(rng.choice(usable))
        ia, ib = (int(v) for v in pc.pairs[k])
        if rng.random() < 0.5:
            ia, ib = ib, ia
        ch = int(rng.random() < 0.3)
        imgs = []
        for i in (ia, ib):
            imgs.append((pc.images[i][ch][None, None].float(), pc.valid[i][None] > 0.5))
        (ref, rv), (mov0, mv0) = imgs
        if mov0.shape != ref.shape:
            continue
        tried += 1
        s = make_sample(ref, rv, mov0, mv0, rng, descriptor)
        if s is None:
            continue
        samples.append(s)
        srcs.append(str(pc.sources[k]))
        if len(samples) % 20 == 0:
            y = np.concatenate([q["y"] for q in samples])
            log(f"{len(samples)} graphs ({tried} tried), {len(y)} nodes, {y.mean():.0%} inliers, "
                f"{time.perf_counter() - t0:.0f} s")
    off_n = np.cumsum([0] + [len(s["y"]) for s in samples])
    off_e = np.cumsum([0] + [s["edge_index"].shape[1] for s in samples])
    info = {"graphs": len(samples), "tried": tried, "nodes": int(off_n[-1]), "seed": seed, "cache": str(cache),
            "sources": {s: srcs.count(s) for s in sorted(set(srcs))}, "seconds": round(time.perf_counter() - t0, 1)}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out, x=np.concatenate([s["x"] for s in samples]), y=np.concatenate([s["y"] for s in samples]),
        delta=np.concatenate([s["delta"] for s in samples]), err=np.concatenate([s["err"] for s in samples]),
        decoy=np.concatenate([s["decoy"] for s in samples]),
        edge_index=np.concatenate([s["edge_index"] for s in samples], 1),
        edge_attr=np.concatenate([s["edge_attr"] for s in samples]), node_offsets=off_n, edge_offsets=off_e,
        info=np.array(json.dumps(info)))
    log(json.dumps(info))
    return info


def load_samples(path: str) -> tuple[list[tuple[torch.Tensor, ...]], dict]:
    z = np.load(path, allow_pickle=False)
    on, oe = z["node_offsets"], z["edge_offsets"]
    graphs: list[tuple[torch.Tensor, ...]] = []
    for g in range(len(on) - 1):
        a, b, c, d = int(on[g]), int(on[g + 1]), int(oe[g]), int(oe[g + 1])
        graphs.append((torch.from_numpy(z["x"][a:b]), torch.from_numpy(z["edge_index"][:, c:d].astype(np.int64)),
                       torch.from_numpy(z["edge_attr"][c:d]), torch.from_numpy(z["y"][a:b]),
                       torch.from_numpy(z["delta"][a:b])))
    return graphs, json.loads(str(z["info"]))


def _batch(graphs) -> tuple[torch.Tensor, ...]:
    """Concatenate graphs into one disconnected graph (edge indices offset)."""
    xs, eis, eas, ys, ds = [], [], [], [], []
    off = 0
    for x, ei, ea, y, d in graphs:
        xs.append(x)
        eis.append(ei + off)
        eas.append(ea)
        ys.append(y)
        ds.append(d)
        off += len(x)
    return torch.cat(xs), torch.cat(eis, 1), torch.cat(eas), torch.cat(ys), torch.cat(ds)


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic); nan when one class is missing."""
    pos, neg = label > 0.5, label <= 0.5
    if pos.sum() == 0 or neg.sum() == 0:
        return float("nan")
    r = np.argsort(np.argsort(score)) + 1.0
    return float((r[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * neg.sum()))


def evaluate(model, graphs) -> dict:
    model.eval()
    with torch.no_grad():
        x, ei, ea, y, d = _batch(graphs)
        logit, delta = model(x, ei, ea)
    p = torch.sigmoid(logit).numpy()
    yy = y.numpy()
    inl = yy > 0.5
    before = d[inl].norm(dim=1)
    after = (d[inl] - delta[inl]).norm(dim=1)
    return {"auc": round(auc(p, yy), 4), "auc_score_only": round(auc(x[:, 0].numpy(), yy), 4),
            "inlier_share": round(float(yy.mean()), 3),
            "refine_err_before": round(float(before.mean()), 4), "refine_err_after": round(float(after.mean()), 4)}


def fit(samples: list[str], out: str, epochs: int = 80, seed: int = 0, minutes: float = 30.0, log=print) -> dict:
    """Train on the graphs of ``samples`` files (90 %; the rest validates), save the best-validating weights."""
    from .model import GraphNetConfig, MatchGraphNet
    from .weights import save_graph_weights

    torch.manual_seed(seed)
    graphs, infos = [], []
    for path in samples:
        g, i = load_samples(path)
        graphs += g
        infos.append(i)
    info = {"files": [Path(p).name for p in samples], "graphs": len(graphs), "nodes": sum(i["nodes"] for i in infos),
            "seeds": [i["seed"] for i in infos]}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(graphs))
    n_val = max(1, len(graphs) // 10)
    val = [graphs[i] for i in order[:n_val]]
    train = [graphs[i] for i in order[n_val:]]
    model = MatchGraphNet(GraphNetConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    pos = float(torch.cat([g[3] for g in train]).mean())
    pos_weight = torch.tensor((1 - pos) / max(pos, 1e-3)).clamp(0.5, 4.0)
    t0 = time.perf_counter()
    best, best_state, epoch, history = -1.0, None, 0, []
    while epoch < epochs and time.perf_counter() - t0 < 60 * minutes:
        model.train()
        perm = rng.permutation(len(train))
        for b0 in range(0, len(perm), 8):
            x, ei, ea, y, d = _batch([train[i] for i in perm[b0:b0 + 8]])
            x = x + 0.01 * torch.randn_like(x)
            logit, delta = model(x, ei, ea)
            loss_c = torch.nn.functional.binary_cross_entropy_with_logits(logit, y, pos_weight=pos_weight)
            m = y > 0.5
            loss_r = torch.nn.functional.smooth_l1_loss(delta[m], d[m], beta=0.25) if m.any() else logit.sum() * 0
            loss = loss_c + 2.0 * loss_r
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch += 1
        ev = evaluate(model, val)
        crit = ev["auc"] - (ev["refine_err_after"] - ev["refine_err_before"])
        history.append({"epoch": epoch, "seconds": round(time.perf_counter() - t0, 1), **ev})
        log(json.dumps(history[-1]))
        if crit > best:
            best, best_state = crit, {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    ev = evaluate(model, val)
    meta = {"seed": seed, "epochs": epoch, "graphs_train": len(train), "graphs_val": len(val),
            "samples": json.dumps(info), "validation": json.dumps(ev), "torch": torch.__version__}
    digest = save_graph_weights(model, out, meta)
    result = {"file": str(out), "sha256": digest, "bytes": Path(out).stat().st_size,
              "parameters": sum(p.numel() for p in model.parameters()), "epochs": epoch,
              "seconds": round(time.perf_counter() - t0, 1), "graphs_train": len(train), "graphs_val": len(val),
              "validation": ev, "samples": info}
    log(json.dumps(result))
    Path(str(out) + ".train_log.json").write_text(json.dumps({"result": result, "history": history}, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="train the match-graph network (self-supervised, CPU)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data", help="generate training graphs from the train cache")
    d.add_argument("--cache", default=str(ROOT / ".traincache" / "hsscl_pairs.npz"))
    d.add_argument("--out", default=str(ROOT / ".traincache" / "graph_samples.npz"))
    d.add_argument("--graphs", type=int, default=260)
    d.add_argument("--minutes", type=float, default=15.0, help="stop early after this long")
    d.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("fit", help="train on generated graphs and write safetensors weights")
    f.add_argument("--samples", nargs="+", default=[str(ROOT / ".traincache" / "graph_samples.npz")])
    f.add_argument("--out", default=str(ROOT / "resources" / "models" / "graph-0.1.0.safetensors"))
    f.add_argument("--epochs", type=int, default=80)
    f.add_argument("--minutes", type=float, default=30.0, help="stop early after this long")
    f.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    if a.cmd == "data":
        generate(a.cache, a.out, a.graphs, a.seed, a.minutes)
    else:
        fit(a.samples, a.out, a.epochs, a.seed, a.minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
