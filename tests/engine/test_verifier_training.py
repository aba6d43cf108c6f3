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
