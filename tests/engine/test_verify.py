"""The verify stage and the decision: one calibrated confidence judges every alternative (issue 17).

Real data: the GeFolki Sentinel-1 / Sentinel-2 patch (``../shared/data``, skipped with the reason when absent)
and the bundled sample pair.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_pipeline import S1_PATCH, S2_PATCH, grid_rmse, misregister, similarity

from hsscl.engine import pipeline
from hsscl.engine.config import CoregConfig
from hsscl.engine.decision import Alternative, decide, former_rule
from hsscl.engine.errors import InputError, NotEnoughMatchesError
from hsscl.engine.matching.matcher import MatchSettings, match_pair
from hsscl.engine.matching.verify import Evidence, judge, load_verifier, log_nfa

SAMPLE = "resources/sample"


def _prepared(path: str):
    from hsscl.engine.io.raster import open_raster_info, read_bands
    from hsscl.engine.preprocess import prepare

    info = open_raster_info(path)
    d, v = read_bands(info.path)
    p = prepare(d, v, info.dtypes[0], info.descriptions, "image", info.path, "auto", None, True)
    return torch.from_numpy(p.image)[None, None], torch.from_numpy(p.valid)[None, None]


@pytest.fixture(scope="module")
def gefolki_pair(data_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("verify")
    ref, s1 = data_file(S2_PATCH), data_file(S1_PATCH)
    tgt = str(tmp / "s1.tif")
    truth = misregister(s1, tgt, similarity(448, 448, 3.0, 1.01, (14.3, -9.6)), bands=[1])
    return ref, tgt, truth


def test_confidence_falls_when_a_real_pair_is_forced_to_a_wrong_alignment(gefolki_pair):
    """S1 onto S2 (GeFolki): matched normally the confidence is high; with the target moved 120 px, outside a
    search radius of 40 px, the best the matcher can offer is a wrong alignment and its confidence is low."""
    ref, tgt, _ = gefolki_pair
    R, RV = _prepared(ref)
    M, MV = _prepared(tgt)
    d = pipeline.get_descriptor("cfog")
    s = MatchSettings(max_shift_px=40.0, max_rotation_deg=4.0, max_scale=0.03)
    good = match_pair(R, RV, M, MV, d, s)
    moved = torch.roll(M, shifts=(120, 120), dims=(-2, -1))
    mvalid = torch.roll(MV, shifts=(120, 120), dims=(-2, -1))
    try:
        wrong = match_pair(R, RV, moved, mvalid, d, s).confidence
    except NotEnoughMatchesError:
        wrong = 0.0
    assert good.confidence > 0.9, good.diagnostics.get("verify")
    assert wrong < 0.3, f"a forced wrong alignment got confidence {wrong:.2f}"


def test_confidence_rises_with_evidence():
    """More windows agreeing, over more of the overlap, far above chance, a sharper consensus: more confident."""
    weak = Evidence(n_windows=100, n_inliers=12, inlier_ratio=0.12, decoy_ratio=0.08, coverage=0.3,
                    log_nfa=log_nfa(100, 12, 20.0, 4), peak=0.15, distinct=0.02, affine_rmse=1.6, coarse_score=0.05,
                    ratio2=0.2, n_inliers2=40, rmse2=1.2)
    strong = Evidence(n_windows=100, n_inliers=70, inlier_ratio=0.7, decoy_ratio=0.08, coverage=1.0,
                      log_nfa=log_nfa(100, 70, 20.0, 4), peak=0.45, distinct=0.15, affine_rmse=0.7, coarse_score=0.4,
                      ratio2=0.85, n_inliers2=250, rmse2=0.6)
    for head in ("candidate", "final"):
        assert judge(strong, head).confidence > judge(weak, head).confidence
        assert 0.0 <= judge(weak, head).confidence <= 1.0
    assert log_nfa(100, 70, 20.0, 4) < -20 < log_nfa(100, 12, 20.0, 4)  # 12 of 100 may be chance: NFA > 1


@pytest.mark.parametrize("n,k,radius", [(40, 12, 9.0), (128, 70, 20.0), (300, 280, 40.0), (10, 4, 6.0)])
def test_log_nfa_is_the_binomial_tail_in_exact_arithmetic(n, k, radius):
    """The a-contrario number against exact integer arithmetic (no underflow even where a float tail would be
    0: 280 of 300 windows agreeing)."""
    from fractions import Fraction
    from math import comb, log10, pi

    p = min(pi * 9.0 / (2 * radius + 1) ** 2, 0.5)
    pf = Fraction(p)
    N, m = n - 3, k - 3
    tail = sum(comb(N, j) * pf ** j * (1 - pf) ** (N - j) for j in range(m, N + 1))

    def big_log10(x: int) -> float:  # log10 of an integer too large for a float
        drop = max(x.bit_length() - 60, 0)
        return log10(x >> drop) + drop * log10(2)

    exact = log10(4) + log10(comb(n, 3)) + big_log10(tail.numerator) - big_log10(tail.denominator)
    assert log_nfa(n, k, radius, 4) == pytest.approx(exact, abs=1e-6)


def test_the_shipped_verifier_is_calibrated_on_held_apart_folds():
    v = load_verifier()
    assert v is not None, "resources/models/verifier-0.1.0.json is missing"
    doc = json.loads(open(f"{SAMPLE}/../models/verifier-0.1.0.json").read())
    cal = doc["calibration_out_of_fold"]["final"]
    assert cal["brier_oof"] < 0.2 and cal["auc_oof"] > 0.8, cal
    assert 0.3 <= v.threshold <= 0.95


class _Res:
    def __init__(self, c: float, ev: Evidence | None = None):
        from hsscl.engine.matching.verify import Verdict

        self.confidence = c
        self.verdict = Verdict(c, "final", ev, "test") if ev else None
        self.diagnostics = {"pass1": {"inliers": ev.n_inliers if ev else 0}}


def test_decision_takes_the_most_confident_alternative_and_refuses_below_the_threshold():
    ev = Evidence(80, 30, 0.375, 0.1, 0.8, -20.0, 0.3, 0.1, 1.0)
    alts = [Alternative("cfog", _Res(0.4, ev), None), Alternative("learned-cfog (second opinion)", _Res(0.8, ev), None)]
    best, dec = decide(alts, min_confidence=0.6)
    assert best.source == "learned-cfog (second opinion)" and dec.accepted and not dec.low_confidence
    assert "highest confidence" in dec.why and dec.candidates[0] == {"source": "cfog", "confidence": 0.4}
    with pytest.raises(NotEnoughMatchesError) as exc:
        decide(alts, min_confidence=0.9)
    assert "confidence of 80%" in exc.value.message and "--keep-best-guess" in exc.value.hint
    best, dec = decide(alts, min_confidence=0.9, keep_best_guess=True)
    assert not dec.accepted and dec.low_confidence and best.confidence == 0.8
    # the former fixed rule accepted this evidence (30 of 80 agree, decoy 10 %): refusing it now is a change
    assert former_rule(ev) and dec.verifier_changed


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_min_confidence_outside_0_1_is_a_clear_error(bad):
    with pytest.raises(InputError) as exc:
        CoregConfig(min_confidence=bad)
    assert "[0, 1]" in exc.value.message
    r = subprocess.run([sys.executable, "-m", "hsscl.engine.cli", "coregister", f"{SAMPLE}/s2_reference.tif",
                        f"{SAMPLE}/s1_target_misregistered.tif", "-o", "/tmp/never-written-hsscl",
                        "--min-confidence", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2 and "minimum confidence must be in [0, 1]" in r.stderr and "Traceback" not in r.stderr


def test_keep_best_guess_flags_every_output(tmp_path):
    """The bundled pair with a threshold no answer can reach: refused (exit 3, nothing written) by default;
    with --keep-best-guess written, and report.json, the tie-point layer and the CLI say low confidence."""
    args = [sys.executable, "-m", "hsscl.engine.cli", "coregister", f"{SAMPLE}/s2_reference.tif",
            f"{SAMPLE}/s1_target_misregistered.tif", "--min-confidence", "1.0", "--quiet", "--threads", "1"]
    r = subprocess.run(args + ["-o", str(tmp_path / "refused")], capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "below the threshold of 100%" in r.stderr
    assert not (tmp_path / "refused" / "coregistered.tif").exists()
    r = subprocess.run(args + ["-o", str(tmp_path / "kept"), "--keep-best-guess"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "LOW CONFIDENCE" in r.stdout
    rep = json.loads((tmp_path / "kept" / "report.json").read_text())
    assert rep["decision"]["low_confidence"] is True and rep["decision"]["accepted"] is False
    assert 0.0 <= rep["confidence"] < 1.0
    from osgeo import ogr

    ds = ogr.Open(str(tmp_path / "kept" / "tiepoints.gpkg"))
    lyr = ds.GetLayerByName("tiepoints")
    assert "LOW CONFIDENCE" in (lyr.GetMetadataItem("DESCRIPTION") or "")


def test_report_carries_confidence_and_decision(gefolki_pair, tmp_path):
    ref, tgt, truth = gefolki_pair
    est = pipeline.estimate(ref, tgt, CoregConfig(seed=0))
    rep = est.report
    assert rep["decision"]["accepted"] and rep["confidence"] >= rep["decision"]["threshold"]
    assert rep["verify"]["evidence"]["n_inliers"] > 10
    assert grid_rmse(est.correction.model, truth, 448, 448) < 1.0


def test_adaptation_that_lowers_the_confidence_is_not_kept(monkeypatch, gefolki_pair):
    """The adaptation guard is the verify stage: an adapted match less confident than the first is dropped."""
    from hsscl.engine import adapt

    ref, tgt, _ = gefolki_pair
    real = adapt.match_pair
    calls = []

    def fake(*a, **k):
        res = real(*a, **k)
        calls.append(res)
        if len(calls) == 2:  # the adapted match: same answer, judged less confident
            from dataclasses import replace

            return replace(res, verdict=replace(res.verdict, confidence=res.confidence * 0.5))
        return res

    monkeypatch.setattr(adapt, "match_pair", fake)
    monkeypatch.setattr(adapt, "DEFAULT", replace(adapt.DEFAULT, max_steps=2))  # keeps the test short
    est = pipeline.estimate(ref, tgt, CoregConfig(seed=0, descriptor="hsscl", adapt=True, adapt_budget_s=300.0))
    note = est.report["adaptation"]
    if len(calls) < 2:
        pytest.skip(f"the budget did not allow a second match on this machine: {note.get('why')}")
    assert note["kept"] == "original" and "not higher" in note["why"], note
    assert math.isclose(est.report["confidence"], calls[0].confidence, abs_tol=1e-4)
    assert np.isfinite(note["confidence"]["after"])
