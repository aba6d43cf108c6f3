"""Self-consistency (issue 17): an alignment found again under a known warp of the target is reproducible when
right and not when wrong; the pipeline asks for the check where the verify stage is unsure, and reports it.

Real data: the GeFolki Sentinel-1 / Sentinel-2 patch (``../shared/data``, skipped with the reason when absent).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from test_pipeline import S1_PATCH, S2_PATCH, misregister, similarity
from test_verify import _prepared

from hsscl.engine import pipeline
from hsscl.engine.config import CoregConfig
from hsscl.engine.matching import consistency
from hsscl.engine.matching.consistency import Consistency, known_warp, self_consistency
from hsscl.engine.matching.fine import FineMatches
from hsscl.engine.matching.matcher import MatchSettings, match_pair
from hsscl.engine.matching.verify import judge_consistency, load_verifier


@pytest.fixture(scope="module")
def s1s2(data_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("consistency")
    ref, s1 = data_file(S2_PATCH), data_file(S1_PATCH)
    tgt = str(tmp / "s1.tif")
    misregister(s1, tgt, similarity(448, 448, 3.0, 1.01, (14.3, -9.6)), bands=[1])
    R, RV = _prepared(ref)
    M, MV = _prepared(tgt)
    return ref, tgt, R, RV, M, MV


def test_a_right_alignment_is_found_again_and_a_wrong_one_is_not(s1s2):
    """S1 onto S2: the matcher's own alignment comes back within a pixel under a known warp of the target;
    the same result moved 25 px (a wrong alignment with the same evidence) is 25 px from what is found again."""
    _, _, R, RV, M, MV = s1s2
    d = pipeline.get_descriptor("cfog")
    s = MatchSettings(max_shift_px=60.0)
    good = match_pair(R, RV, M, MV, d, s)
    c = self_consistency(R, RV, M, MV, good, d, s, seed=3)
    assert c.distance_px < 1.0 and c.confidence2 > 0.8, c
    fm = good.matches
    wrong = replace(good, matches=FineMatches(fm.ref_xy, fm.mov_xy + [25.0, 0.0], fm.score, fm.distinct,
                                              fm.n_windows))
    cw = self_consistency(R, RV, M, MV, wrong, d, s, seed=3)
    assert 20.0 < cw.distance_px < 30.0, cw


def test_the_known_warp_is_a_real_change_inside_the_search_ranges():
    for seed in range(20):
        a = known_warp(400, 300, seed).A
        scale = np.sqrt(abs(np.linalg.det(a[:, :2])))
        rot = np.degrees(np.arctan2(a[1, 0], a[0, 0]))
        assert 0.015 <= abs(scale - 1) <= 0.031 and 1.5 <= abs(rot) <= 3.0
        moved = known_warp(400, 300, seed)(np.array([[200.0, 150.0]]))[0] - [200.0, 150.0]
        assert 0.03 * 300 - 1e-6 <= np.abs(moved).min() and np.abs(moved).max() <= 0.06 * 400 + 1e-6
    assert not np.allclose(known_warp(400, 300, 1).A, known_warp(400, 300, 2).A)


def test_the_consistency_head_trusts_a_reproducible_alignment_more():
    v = load_verifier()
    if v is None or v.consistency is None:
        pytest.fail("the shipped verifier has no consistency head (resources/models, registry entry 'verifier')")
    from hsscl.engine.matching.verify import Evidence, Verdict

    ev = Evidence(80, 30, 0.375, 0.1, 0.8, -20.0, 0.3, 0.1, 1.0)
    base = Verdict(0.55, "final", ev, v.name)
    near = Consistency(0.4, 0.6, (1.02, 2.0, 10.0, 8.0), 1.0)
    far = Consistency(25.0, 0.6, (1.02, 2.0, 10.0, 8.0), 1.0)
    lost = Consistency(consistency.NO_MATCH_PX, 0.0, (1.02, 2.0, 10.0, 8.0), 1.0)
    c_near, c_far, c_lost = (judge_consistency(base, c, v).confidence for c in (near, far, lost))
    assert c_near > 0.55 > c_far and c_lost < 0.3, (c_near, c_far, c_lost)
    assert judge_consistency(base, near, v).head == "consistency"


def test_an_unsure_alignment_is_checked_and_the_check_reported(s1s2, monkeypatch):
    """Every confidence counted as unsure: the pipeline matches the leader again, reports the check in
    report.json and the log, and the check's confidence is the decision's; --no-consistency-check skips it."""
    ref, tgt, *_ = s1s2
    monkeypatch.setattr(consistency, "in_band", lambda c: True)
    logs: list[str] = []
    from hsscl.engine.progress import Monitor

    est = pipeline.estimate(ref, tgt, CoregConfig(seed=0, descriptor="cfog"),
                            Monitor(report_fn=lambda f, m: logs.append(m)))
    rep = est.report
    c = rep["consistency"]
    assert c is not None and c["distance_px"] < 1.0, c
    assert rep["confidence"] == pytest.approx(c["confidence_after"], abs=1e-4)
    assert rep["decision"]["accepted"] and any("matched again under a known warp" in m for m in logs)
    off = pipeline.estimate(ref, tgt, CoregConfig(seed=0, descriptor="cfog", consistency_check=False))
    assert off.report["consistency"] is None
