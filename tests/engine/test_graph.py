"""The match graph (engine/graph) on real data: construction, outlier separation, pipeline use, weights, fallback.

The real pair is CFOG's visible / infrared pair (its central 384 x 384; evaluation-only data never used in
training),
aligned by the affine fitted to its 290 published tie points ``G`` (reference px -> infrared px), the
infrared image then resampled through a known affine ``T``: the true moving position of reference pixel
``p`` is ``T(G(p))``, so every match can be judged.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from osgeo import gdal

from hsscl.engine.descriptors.cfog import CFOG
from hsscl.engine.errors import WeightsError
from hsscl.engine.geometry.transforms import Affine, fit_model
from hsscl.engine.graph.features import EDGE_DIM, NODE_DIM, build_edges, build_graph, knn
from hsscl.engine.graph.refine import graph_refine
from hsscl.engine.graph.train import auc, decoy_matches, global_affine, warp_image
from hsscl.engine.matching.fine import FineMatches
from hsscl.engine.matching.matcher import MatchSettings, match_pair
from hsscl.engine.network.registry import REGISTRY, read_registry
from hsscl.engine.preprocess import prepare

gdal.UseExceptions()
needs_pyg = pytest.mark.skipif(importlib.util.find_spec("torch_geometric") is None,
                               reason="torch-geometric is not installed")

VIS = "cfog_ye2019/data/visible_ref.tif"
IR = "cfog_ye2019/data/infrared_sen.tif"
CPS = "cfog_ye2019/data/VisibletoInfrared_CP.txt"    # x1 y1 x2 y2 (MATLAB, 1-based), visible -> infrared
SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "sample"


def _prepared(path: str, role: str):
    ds = gdal.Open(path)
    a = ds.ReadAsArray().astype(np.float32)
    a = a if a.ndim == 2 else a.mean(0)
    p = prepare(a[None], np.ones(a.shape, bool), "Byte", [], role, path)
    return torch.from_numpy(p.image)[None, None], torch.from_numpy(p.valid)[None, None]


@pytest.fixture(scope="module")
def matched(data_file):
    """Pass-2 matches of the real pair under a known affine T (reference px -> moving px) + decoys."""
    torch.manual_seed(0)
    o = 64                                                        # central 384 x 384 of both (fast test)
    ref, rv = (v[..., o:o + 384, o:o + 384] for v in _prepared(data_file(VIS), "reference"))
    ir, iv = (v[..., o:o + 384, o:o + 384] for v in _prepared(data_file(IR), "target"))
    cp = np.loadtxt(data_file(CPS))[:, :4] - 0.5                  # MATLAB -> corner convention
    G = fit_model("affine", cp[:, :2] - o, cp[:, 2:] - o)
    H, W = ref.shape[-2:]
    S = Affine.from_similarity(1.03, 2.5, 9.0, -6.0, (W / 2, H / 2))
    mov, mv = warp_image(ir, iv, S)
    T = S.compose(G)
    d = CFOG()
    res = match_pair(ref, rv, mov, mv, d, MatchSettings(max_shift_px=40.0))
    decoys = decoy_matches(d(ref, rv), rv, mov, mv, global_affine(res.matches, res.inlier), H, W, d,
                           np.random.default_rng(1))
    return dict(ref=ref, rv=rv, mov=mov, mv=mv, T=T, res=res, decoys=decoys, descriptor=d)


def test_knn_edges_on_a_hand_built_grid():
    xy = np.stack(np.meshgrid(np.arange(5.0), np.arange(4.0)), -1).reshape(-1, 2) * 10 + 5
    nn = knn(torch.tensor(xy, dtype=torch.float32), 4)
    assert nn.shape == (20, 4)
    d = np.linalg.norm(xy[nn.numpy()] - xy[:, None], axis=2)
    full = np.linalg.norm(xy[:, None] - xy[None], axis=2)
    full[np.arange(20), np.arange(20)] = np.inf
    assert (d > 0).all()                                          # never itself ...
    np.testing.assert_allclose(np.sort(d, 1), np.sort(full, 1)[:, :4])   # ... always the 4 nearest
    np.testing.assert_allclose(np.sort(d[6]), [10, 10, 10, 10])   # (1, 1): its 4 nearest are at exactly 10 px
    ei, ea, spacing = build_edges(xy, np.zeros_like(xy), np.ones(20), k=4, k_disp=0)
    assert spacing == pytest.approx(10.0)
    assert ei.shape == (2, 80) and ea.shape == (80, EDGE_DIM)
    assert (ei[0] != ei[1]).all()
    # edge j -> i carries (p_j - p_i) / spacing
    j, i = ei[0].numpy(), ei[1].numpy()
    np.testing.assert_allclose(ea[:, :2].numpy(), (xy[j] - xy[i]) / 10.0, atol=1e-6)


def test_graph_of_real_matches_has_the_documented_shapes(matched):
    fm = matched["res"].matches
    g = build_graph(fm, matched["res"].inlier, matched["ref"], matched["rv"], matched["mov"], matched["mv"],
                    matched["descriptor"])
    n = len(fm)
    assert n >= 30
    assert g.x.shape == (n, NODE_DIM) and torch.isfinite(g.x).all()
    assert g.edge_index.shape[0] == 2 and g.edge_attr.shape == (g.edge_index.shape[1], EDGE_DIM)
    indeg = torch.bincount(g.edge_index[1], minlength=n)
    assert int(indeg.min()) >= 8                                  # k = 8 spatial neighbours at least
    assert (g.edge_index[0] != g.edge_index[1]).all()
    # the ZNCC of a correct match at the fine template is high and peaks at the centre offset
    err = np.linalg.norm(fm.mov_xy - matched["T"](fm.ref_xy), axis=1)
    good = err < 1.0
    assert good.sum() >= 20
    centre = g.x[:, 9].numpy()                                    # scale 16 px, offset (0, 0)
    assert np.median(centre[good]) > 0.3


@needs_pyg
def test_model_separates_real_matches_from_injected_outliers(matched):
    from hsscl.engine.graph.weights import load_registered_graph

    fm, dec = matched["res"].matches, matched["decoys"]
    T = matched["T"]
    # replace every third match by the matcher's own answer under a wrong model (same reference position)
    key = {(round(x, 1), round(y, 1)): i for i, (x, y) in enumerate(dec.ref_xy)}
    mov, sc, ds = fm.mov_xy.copy(), fm.score.copy(), fm.distinct.copy()
    injected = np.zeros(len(fm), bool)
    for i in range(0, len(fm), 3):
        j = key.get((round(fm.ref_xy[i, 0], 1), round(fm.ref_xy[i, 1], 1)))
        if j is not None:
            mov[i], sc[i], ds[i], injected[i] = dec.mov_xy[j], dec.score[j], dec.distinct[j], True
    mixed = FineMatches(fm.ref_xy, mov, sc, ds, fm.n_windows)
    err = np.linalg.norm(mov - T(fm.ref_xy), axis=1)
    inl = err < 1.5
    assert injected.sum() >= 20 and (injected & inl).sum() == 0
    model, _ = load_registered_graph()
    g = build_graph(mixed, matched["res"].inlier & ~injected, matched["ref"], matched["rv"], matched["mov"],
                    matched["mv"], matched["descriptor"])
    with torch.no_grad():
        logit, delta = model(g.x, g.edge_index, g.edge_attr)
    p = torch.sigmoid(logit).numpy()
    assert float(delta.abs().max()) <= 1.0 + 1e-6
    a = auc(p[inl | injected], inl[inl | injected].astype(float))
    assert a > 0.9, f"AUC real inliers vs injected outliers {a:.3f}"
    keep = p >= 0.5
    assert (keep & inl).sum() / max(keep.sum(), 1) > 0.9           # precision of what the graph keeps


@needs_pyg
def test_refinement_keeps_enough_and_passes_the_probability_as_prior(matched):
    fm = matched["res"].matches
    out, rep = graph_refine("on", fm, matched["res"].inlier, matched["ref"], matched["rv"], matched["mov"],
                            matched["mv"], matched["descriptor"])
    assert rep["used"] and rep["nodes_in"] == len(fm) and rep["nodes_out"] == len(out)
    assert len(out) >= min(len(fm), max(16, int(np.ceil(0.3 * len(fm)))))
    assert (out.score >= 0.05).all() and (out.score <= 1).all()
    assert rep["seconds"] < 3.0          # build + inference (the cost measure is test_graph_is_cheap_for_300_nodes)
    # refined positions moved by at most the network's bound, at the same reference positions
    idx = [int(np.flatnonzero((fm.ref_xy == r).all(1))[0]) for r in out.ref_xy]
    assert np.abs(out.mov_xy - fm.mov_xy[idx]).max() <= 1.0 + 1e-6


@needs_pyg
def test_graph_is_cheap_for_300_nodes(matched):
    from hsscl.engine.graph.weights import load_registered_graph

    model, _ = load_registered_graph()
    fm = matched["res"].matches
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(fm), 300)
    big = FineMatches(fm.ref_xy[idx] + rng.uniform(-3, 3, (300, 2)), fm.mov_xy[idx], fm.score[idx],
                      fm.distinct[idx], 300)
    build_graph(big, None, matched["ref"], matched["rv"], matched["mov"], matched["mv"], matched["descriptor"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)             # one core, measured as CPU time (the test machine may be shared)
    try:
        best = _cpu_seconds(model, big, matched)
    finally:
        torch.set_num_threads(threads)
    assert best < 1.0, f"{best:.2f} s CPU for 300 nodes (0.4 s on a shared core, less when idle)"


def _cpu_seconds(model, big, matched) -> float:
    import time

    best = np.inf
    for _ in range(2):
        t = time.process_time()
        g = build_graph(big, None, matched["ref"], matched["rv"], matched["mov"], matched["mv"],
                        matched["descriptor"])
        with torch.no_grad():
            model(g.x, g.edge_index, g.edge_attr)
        best = min(best, time.process_time() - t)
    return best


def _sample_errors(est) -> np.ndarray:
    truth = json.loads((SAMPLE / "truth.json").read_text())
    M = np.vstack([np.array(truth["target_to_reference_pixel"]), [0, 0, 1]])
    q = np.stack(np.meshgrid(np.arange(40, 410, 20.0), np.arange(40, 410, 20.0)), -1).reshape(-1, 2)
    t = est.correction.model(q)
    back = np.c_[t, np.ones(len(t))] @ M.T
    return np.linalg.norm(back[:, :2] - q, axis=1)


@needs_pyg
def test_pipeline_with_graph_on_and_off_on_the_sample_pair():
    from hsscl.engine.config import CoregConfig
    from hsscl.engine.pipeline import estimate

    ref, tgt = SAMPLE / "s2_reference.tif", SAMPLE / "s1_target_misregistered.tif"
    off = estimate(ref, tgt, CoregConfig(graph="off", threads=1))
    on = estimate(ref, tgt, CoregConfig(graph="on", threads=1))
    assert off.report["graph"]["used"] is False and "off" in off.report["graph"]["reason"]
    g = on.report["graph"]
    assert g["used"] is True and g["nodes_out"] <= g["nodes_in"] and g["seconds"] < 3.0
    e_off, e_on = _sample_errors(off), _sample_errors(on)
    assert np.sqrt(np.mean(e_off ** 2)) < 1.5
    assert np.sqrt(np.mean(e_on ** 2)) < np.sqrt(np.mean(e_off ** 2)) + 0.3


def test_auto_mode_reports_why_it_is_off_or_on():
    from hsscl.engine.graph import refine

    fm = FineMatches(np.zeros((20, 2)), np.zeros((20, 2)), np.ones(20), np.ones(20), 20)
    out, rep = graph_refine("auto", fm, None, None, None, None, None, CFOG())
    if not refine.AUTO_ENABLED:
        assert out is fm and rep["used"] is False and "auto = off" in rep["reason"]


@needs_pyg
def test_checksum_mismatch_raises_a_clear_weights_error(tmp_path, matched):
    from hsscl.engine.graph.weights import load_registered_graph

    reg = read_registry(REGISTRY)
    entry = reg["models"]["graph"]
    shutil.copy(REGISTRY.parent / entry["file"], tmp_path / entry["file"])
    entry["sha256"] = "0" * 64
    (tmp_path / "registry.json").write_text(json.dumps(reg))
    with pytest.raises(WeightsError, match="corrupt \\(checksum mismatch\\)") as exc:
        load_registered_graph(tmp_path / "registry.json")
    assert "--graph off" in exc.value.hint and "expected 000" in exc.value.details
    fm = matched["res"].matches
    with pytest.raises(WeightsError):
        graph_refine("on", fm, None, matched["ref"], matched["rv"], matched["mov"], matched["mv"],
                     matched["descriptor"], registry=tmp_path / "registry.json")


def test_falls_back_when_torch_geometric_cannot_be_imported(monkeypatch, matched):
    monkeypatch.setitem(sys.modules, "torch_geometric", None)     # import raises ImportError
    fm = matched["res"].matches
    out, rep = graph_refine("on", fm, matched["res"].inlier, matched["ref"], matched["rv"], matched["mov"],
                            matched["mv"], matched["descriptor"])
    assert out is fm
    assert rep["used"] is False and "torch-geometric is not installed" in rep["reason"]
    assert rep["nodes_in"] == rep["nodes_out"] == len(fm)
