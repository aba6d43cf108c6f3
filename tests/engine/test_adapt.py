"""On-the-fly adaptation (engine/adapt.py) on the real sample pair (Sentinel-2 reference, Sentinel-1 target
misregistered by a known similarity, resources/sample/truth.json): budget, report, truth, untouched
weights, cancel, guard, tiny budget, failed first match; the hybrid descriptor (its own network adapted,
the template-matching term, re-matched as the hybrid)."""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from hsscl.engine import adapt
from hsscl.engine.config import CoregConfig
from hsscl.engine.errors import CancelledError, NotEnoughMatchesError
from hsscl.engine.network.registry import MODELS_DIR, registry_entry, sha256
from hsscl.engine.pipeline import estimate
from hsscl.engine.progress import Monitor

SAMPLE = Path(__file__).resolve().parents[2] / "resources" / "sample"
REF, TGT = str(SAMPLE / "s2_reference.tif"), str(SAMPLE / "s1_target_misregistered.tif")


def truth_rmse(model, step: int = 16) -> float:
    """RMSE (px) of a ref px -> target px model against truth.json (target px -> reference px)."""
    t = json.loads((SAMPLE / "truth.json").read_text())
    M = np.vstack([np.array(t["target_to_reference_pixel"]), [0, 0, 1]])
    Mi = np.linalg.inv(M)
    xs, ys = np.meshgrid(np.arange(step // 2, 448, step) + 0.5, np.arange(step // 2, 448, step) + 0.5)
    p = np.stack([xs.ravel(), ys.ravel()], 1)
    truth = p @ Mi[:2, :2].T + Mi[:2, 2]
    return float(np.sqrt(np.mean(np.sum((model(p) - truth) ** 2, axis=1))))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: the test machine may be shared, and oversubscribed threads slow torch many times."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def plain(one_thread):
    """The pair matched without adaptation (descriptor auto)."""
    return estimate(REF, TGT, CoregConfig())


def test_evidence_uses_geometric_counts_only():
    diag = {"pass1": {"inliers": 40, "inlier_ratio": 0.8, "affine_rmse": 0.9}, "decoy_inlier_ratio": 0.1,
            "pass2": {"inliers": 200, "inlier_ratio": 0.9, "affine_rmse": 1.0}}
    ev = adapt.evidence(diag)
    assert ev["score"] == pytest.approx(0.7 + 0.9 - 0.2)
    worse = adapt.evidence({**diag, "decoy_inlier_ratio": 0.4})
    assert worse["score"] < ev["score"]


def test_adapt_on_real_pair_within_budget_and_truth_weights_untouched(plain, monkeypatch):
    monkeypatch.setattr(adapt, "DEFAULT", replace(adapt.DEFAULT, max_steps=8))  # keeps the test short
    weights = MODELS_DIR / registry_entry()["file"]
    before = sha256(weights)
    budget = 60.0  # generous: the machine running the tests may be loaded; 8 steps take a few seconds
    messages: list[str] = []
    est = estimate(REF, TGT, CoregConfig(adapt=True, adapt_budget_s=budget),
                   Monitor(report_fn=lambda f, m: messages.append(m)))
    ad = est.report["adaptation"]
    assert ad["kept"] in ("adapted", "original") and ad["why"]
    assert 1 <= ad["steps"] <= ad["max_steps"]
    assert ad["pseudo_positives"] >= adapt.DEFAULT.min_pseudo
    assert ad["seconds"] <= 1.5 * budget + 3.0  # the second match is budgeted from an estimate
    assert ad["evidence"]["before"]["score"] > 0
    assert any(m.startswith("adaptation: step") for m in messages)
    assert truth_rmse(est.correction.model) < 1.5
    if ad["kept"] == "original":
        assert est.report["descriptor"] == "cfog"
        assert np.allclose(est.tiepoints.ref_xy, plain.tiepoints.ref_xy)
    json.dumps(est.report)  # the report stays JSON-serialisable
    assert sha256(weights) == before


def test_cancel_during_adaptation_is_quick():
    state: dict[str, float] = {}

    def report(fraction: float, message: str) -> None:
        if message.startswith("adaptation: step") and "seen" not in state:
            state["seen"] = time.perf_counter()

    def cancelled() -> bool:
        return "seen" in state and time.perf_counter() >= state["seen"] + 0.3

    with pytest.raises(CancelledError):
        estimate(REF, TGT, CoregConfig(adapt=True, adapt_budget_s=600.0), Monitor(report_fn=report, cancel_fn=cancelled))
    assert "seen" in state
    assert time.perf_counter() - (state["seen"] + 0.3) < 2.0


def test_guard_keeps_original_when_adaptation_is_broken(monkeypatch):
    # a deliberately destructive adaptation (huge learning rate): its evidence cannot beat the first match
    monkeypatch.setattr(adapt, "DEFAULT", replace(adapt.DEFAULT, lr=0.5, max_steps=4))
    est = estimate(REF, TGT, CoregConfig(descriptor="hsscl", adapt=True, adapt_budget_s=600.0))
    ad = est.report["adaptation"]
    assert ad["kept"] == "original", ad
    assert ad["steps"] == 4
    assert "first match (hsscl) is kept" in ad["why"]
    # the result is the first match's: its diagnostics are the ones reported
    assert adapt.evidence(est.report["matching"]) == ad["evidence"]["before"]


def test_tiny_budget_is_honoured(plain):
    t = time.perf_counter()
    est = estimate(REF, TGT, CoregConfig(adapt=True, adapt_budget_s=0.1))
    wall = time.perf_counter() - t
    ad = est.report["adaptation"]
    assert ad["kept"] == "original" and ad["steps"] == 0 and "budget" in ad["why"]
    assert ad["seconds"] < 3.0
    assert wall < plain.report["timings_s"]["total_estimate"] + 5.0
    assert est.correction.model.to_dict() == plain.correction.model.to_dict()


def test_failed_first_match_says_what_adaptation_tried(tmp_path):
    from osgeo import gdal

    src = gdal.Open(TGT)
    noise = tmp_path / "noise.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(noise), src.RasterXSize, src.RasterYSize, 1, gdal.GDT_Float32)
    ds.SetGeoTransform(src.GetGeoTransform())
    ds.SetProjection(src.GetProjection())
    ds.GetRasterBand(1).WriteArray(np.random.default_rng(0).gamma(1.0, 1.0, (src.RasterYSize, src.RasterXSize)))
    ds = None
    with pytest.raises(NotEnoughMatchesError) as info:
        estimate(REF, str(noise), CoregConfig(adapt=True))
    assert "not confident enough" in info.value.details and "nothing was adapted" in info.value.details


def test_hybrid_loss_adds_the_template_term_with_gradients_on_the_fine_level():
    import torch

    from hsscl.engine.network.model import HSSCLNet, NetConfig

    torch.manual_seed(0)
    model = HSSCLNet(NetConfig())
    a = torch.randn(2, 1, 64, 64)
    a = torch.nn.functional.avg_pool2d(a, 3, 1, 1)  # some spatial structure
    v = torch.ones_like(a, dtype=torch.bool)
    s = replace(adapt.DEFAULT, crop=64, tm_template=16, tm_radius=4, tm_n=2)
    loss, terms = adapt._loss(model, a, a.clone(), v, v, s, torch.Generator().manual_seed(0), hybrid_weight=0.5)
    assert {"nce", "coral", "acc", "tm_hybrid", "tm_acc"} <= set(terms)
    assert np.isfinite(terms["tm_hybrid"]) and terms["tm_hybrid"] > 0
    loss.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in model.fine.parameters())
    # the network alone (or a crop too small for template + 2 x radius) has no template term
    _, plain_terms = adapt._loss(model, a, a, v, v, s, torch.Generator().manual_seed(0))
    assert "tm_hybrid" not in plain_terms
    _, small = adapt._loss(model, a, a, v, v, replace(s, tm_template=60), torch.Generator().manual_seed(0), 0.5)
    assert "tm_hybrid" not in small


def test_hybrid_adapts_its_own_network_and_rematches_as_the_hybrid(monkeypatch):
    import torch

    from hsscl.engine import pipeline
    from hsscl.engine.descriptors.hybrid import HybridDescriptor

    monkeypatch.setattr(adapt, "DEFAULT", replace(adapt.DEFAULT, max_steps=4))  # keeps the test short
    weights = MODELS_DIR / registry_entry()["file"]
    before = sha256(weights)
    matched: list = []  # the descriptors match_pair ran with: the first match's, then the adapted one
    seen: dict = {}
    match_pair, match_adapted = adapt.match_pair, pipeline.match_adapted

    def recording_match(*args, **kwargs):
        matched.append(args[4])
        return match_pair(*args, **kwargs)

    def recording_adapted(*args, **kwargs):
        first = seen["first"] = args[4]
        seen["state"] = {k: v.clone() for k, v in first.network.model.state_dict().items()}
        out = match_adapted(*args, **kwargs)
        seen["kept"] = out[1]
        return out

    monkeypatch.setattr(adapt, "match_pair", recording_match)
    monkeypatch.setattr(pipeline, "match_adapted", recording_adapted)
    est = estimate(REF, TGT, CoregConfig(descriptor="hybrid", adapt=True, adapt_budget_s=60.0))
    ad = est.report["adaptation"]
    assert ad["network"] == "hybrid (fine level)" and ad["first_descriptor"] == "hybrid", ad
    assert ad["adapted_descriptor"] == "hybrid" and ad["hybrid_weight"] == 0.5
    assert ad["kept"] in ("adapted", "original") and ad["why"]
    assert ad["steps"] == 4 and ad["stopped"] == "all steps done"
    assert set(ad["loss_terms"]) == {"nce", "coral", "tm_hybrid"}
    assert all(np.isfinite(v) for t in ad["loss_terms"].values() for v in t.values())
    assert 0.0 <= ad["template_accuracy"]["last"] <= 1.0
    assert ad["evidence"]["after"] is not None  # the re-match ran
    first, kept = seen["first"], seen["kept"]
    assert len(matched) == 2 and matched[0] is first
    rematch = matched[1]
    for d in (first, kept, rematch):
        assert isinstance(d, HybridDescriptor)
    assert kept is (rematch if ad["kept"] == "adapted" else first)
    assert est.report["descriptor"] == "hybrid"
    assert rematch.weight == first.weight and rematch.network.levels == first.network.levels == ("fine",)
    assert rematch.network.info.get("adapted") is True
    assert rematch.network.model is not first.network.model
    # the original network is untouched; the adapted one's parameters changed
    after = first.network.model.state_dict()
    assert set(after) == set(seen["state"]) and all(torch.equal(after[k], v) for k, v in seen["state"].items())
    orig_params = dict(first.network.model.named_parameters())
    assert any(not torch.equal(p, orig_params[k]) for k, p in rematch.network.model.named_parameters())
    assert truth_rmse(est.correction.model) < 1.5
    json.dumps(est.report)
    assert sha256(weights) == before
