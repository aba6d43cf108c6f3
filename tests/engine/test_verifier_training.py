"""The verifier's self-supervised fitting (engine/train/verifier.py) as a smoke test on real training pairs:
samples are matched with the decision off and labelled by the known warp; the heads fit and are calibrated."""
from __future__ import annotations

import json
import math

import numpy as np

from hsscl.engine.matching.verify import Verifier, features
from hsscl.engine.train import verifier as V


def test_collect_labels_real_samples_by_their_known_warp(mini_cache):
    recs = V.collect(4, seed=3, negatives=0.25, cache_path=mini_cache, log=lambda *_: None)
    assert len(recs) == 4
    for r in recs:
        assert r["key"].startswith("bigearthnet:") and r["size"] >= 128
        if r.get("final") is not None:
            assert set(r["final"]) == set(V.FEATURES["final"])
            assert r["candidates"] and all(set(c["features"]) == set(V.FEATURES["candidate"]) for c in r["candidates"])
            # unrelated ground is never right; a real pair's error is measured against its known warp
            assert (r["error"] == math.inf) if r["negative"] else (0.0 <= r["error"] < math.inf)


def test_fit_separates_right_from_wrong_and_writes_a_loadable_verifier(tmp_path):
    """Synthetic records where agreement goes with being right: the out-of-fold confidence ranks them, the
    threshold keeps wrong answers rare, and the written file loads as a Verifier."""
    from hsscl.engine.matching.verify import Evidence

    rng = np.random.default_rng(0)
    recs = []
    for i in range(120):
        right = bool(rng.random() < 0.6)
        n = int(rng.integers(40, 90)) if right else int(rng.integers(5, 30))
        ev = Evidence(100, n, n / 100, 0.1, 0.9 if right else 0.4, -30.0 if right else 2.0, 0.3, 0.1, 0.8,
                      0.2 if right else 0.05, 0.8 if right else 0.3, 3 * n, 0.8, 0.05 if right else 0.0)
        err = float(rng.uniform(0.2, 2.0)) if right else float(rng.uniform(6, 40))
        recs.append({"key": f"k{i % 12}", "error": err, "final": features(ev, "final"),
                     "candidates": [{"error": err, "features": features(ev, "candidate")}]})
    fitted = V.fit(recs)
    summ = V.summary(fitted)
    assert summ["final"]["auc_oof"] > 0.95 and summ["final"]["brier_oof"] < 0.1
    at = summ["at_threshold"]
    assert at["accepted_over_5px"] <= len(recs) / 60
    doc = {"name": "verifier-test", "threshold": fitted["threshold"],
           "candidate": fitted["heads"]["candidate"]["head"].to_dict(),
           "final": fitted["heads"]["final"]["head"].to_dict()}
    (tmp_path / "v.json").write_text(json.dumps(doc))
    v = Verifier.load(tmp_path / "v.json")
    assert v.name == "verifier-test" and 0.3 <= v.threshold <= 0.95


def test_collect_agreement_asks_the_second_descriptor_only_below_the_threshold(mini_cache):
    """Real samples: CFOG as the pipeline runs it; learned-cfog only where CFOG is below the threshold (here 1.01:
    always, and 0: never), each answer with its delivered model on the 9 x 9 grid and its error."""
    always = V.collect_agreement(2, seed=5, threshold=1.01, cache_path=mini_cache, log=lambda *_: None)
    never = V.collect_agreement(2, seed=5, threshold=0.0, cache_path=mini_cache, log=lambda *_: None)
    assert all("learned-cfog" in r for r in always) and not any("learned-cfog" in r for r in never)
    for r in always:
        for name in ("cfog", "learned-cfog"):
            ans = r[name]
            assert 0.0 <= ans["confidence"] <= 1.0
            if "grid" in ans:
                assert np.asarray(ans["grid"]).shape == (81, 2)
                assert (ans["error"] == math.inf) if r["negative"] else (0.0 <= ans["error"] < math.inf)
    assert [r["cfog"]["confidence"] for r in always] == [r["cfog"]["confidence"] for r in never]  # same samples


def test_fit_agreement_learns_that_agreeing_descriptors_are_right():
    """Synthetic records: below the threshold, answers are right where the two descriptors land together and
    wrong where they land apart; the head learns it (out of fold), accepts more right answers than the confidence
    alone, and keeps those far off out."""
    rng = np.random.default_rng(1)
    grid = np.stack(np.meshgrid(np.arange(9.0), np.arange(9.0)), -1).reshape(-1, 2) * 20
    recs = []
    for i in range(160):
        right = bool(rng.random() < 0.5)
        conf = float(rng.uniform(0.3, 0.6))
        off = float(rng.uniform(0.0, 0.8)) if right else float(rng.uniform(4, 30))
        recs.append({"key": f"k{i % 10}", "seed": 0,
                     "cfog": {"confidence": conf, "grid": grid.tolist(),
                              "error": float(rng.uniform(0.2, 2)) if right else float(rng.uniform(6, 40))},
                     "learned-cfog": {"confidence": conf - 0.1, "grid": (grid + off).tolist(), "error": 9.0}})
    recs += [{"key": "k0", "cfog": {"confidence": 0.95, "error": 0.5}}] * 20  # CFOG sure: no second opinion
    out = V.fit_agreement(recs, threshold=0.64)
    s = out["summary"]
    assert s["examples"] == 160 and s["samples"] == 180
    assert s["auc_oof"] > 0.95 > s["auc_confidence_alone"] and s["brier_oof"] < s["brier_confidence_alone"]
    with_, alone = s["at_threshold"]["with_agreement"], s["at_threshold"]["confidence_alone"]
    assert with_["within_3px"] > alone["within_3px"] + 40 and with_["off_over_5px"] == alone["off_over_5px"] == 0
    assert out["head"].names == ("logit_confidence", "agreement") and out["head"].coef[1] > 0
