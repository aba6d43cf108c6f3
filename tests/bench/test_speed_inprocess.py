"""Issue 20's in-process timing (bench/speed_inprocess.py) and its part of the Speed section (bench/speed.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import scale, speed
from bench import speed_inprocess as sip


def _shared() -> Path:
    shared = scale.shared_root()
    if not all((shared / scale.AROSICS / name).exists() for name, _, _ in scale.SOURCE_BLOCKS):
        pytest.skip(f"../shared/data not found: the Sentinel-2 scenes of {scale.AROSICS} are not in {shared}")
    return shared


def _pair(name: str, size: int, median: float, fastest: float) -> dict:
    return {"name": name, "kind": "k", "size": size, "seconds": [median, fastest], "median_s": median,
            "min_s": fastest, "warmup_s": 2.0, "error": None, "confidence": 0.99,
            "timings_s": {"read": 0.01, "preprocess": 0.05, "match": median - 0.1, "fit": 0.01},
            "match_split_s": {"coarse": 0.3, "verify": 0.2, "refine": 0.1},
            "decision": {"chosen": "cfog", "candidates": [{"source": "cfog", "confidence": 0.99}]},
            "search": {"wider": False}, "true_error": {"rmse_px": 0.01, "max_px": 0.02}}


def _run(commit: str, medians: tuple[float, float, float, float]) -> dict:
    top = [{"function": f"engine/matching/ncc.py:{10 + k}(f{k})", "ncalls": 3, "primitive_calls": 3,
            "tottime": 0.5 - 0.1 * k, "cumtime": 0.9} for k in range(3)]
    return {"date": "2026-12-06 12:00 UTC", "commit": commit, "engine_dirty": False, "engine_checkout": "/x",
            "engine_path": "/x/__init__.py", "threads": 2, "torch_threads": 2, "repeats": 3, "load_avg": 1.0,
            "load_avg_start": 1.0, "skipped": [],
            "pairs": [_pair("s2_256", 256, medians[0], medians[0] - 0.05),
                      _pair("s2_512", 512, medians[1], medians[1] - 0.05),
                      _pair("s2_1024", 1024, medians[2], medians[2] - 0.05),
                      _pair("sar_optical_chip", 256, medians[3], medians[3] - 0.05)],
            "profile": {"pair": "sar_optical_chip", "top": top, "total_tottime_s": 1.2, "wall_s": 1.3,
                        "functions": 700, "error": None}}


def test_section_part_renders_targets_with_and_without_before(tmp_path):
    after, before = _run("aaaaaaa", (0.7, 1.6, 3.0, 0.9)), _run("bbbbbbb", (1.0, 2.0, 3.5, 1.2))
    alone = sip.section_part(after)
    assert alone.startswith("**In process (issue 20's targets)**") and "aaaaaaa" in alone
    assert "| `s2_256` | 256 x 256 | 0.70 | 0.65 | 0.60 (0.30 / 0.20 / 0.10) | 0.990 | cfog 0.99 | ≤ 0.8 s | yes |" \
        in alone
    assert "| ≤ 1.5 s | no |" in alone and "| no slower than before | – |" in alone
    assert "Profile (commit aaaaaaa)" in alone and "| `engine/matching/ncc.py:10(f0)` | 3 | 0.500 | 0.900 |" in alone
    both = sip.section_part(after, before)
    assert "bbbbbbb" in both and "before: median / fastest s" in both
    assert "| `s2_1024` | 1024 x 1024 | 3.00 | 2.95 | 3.50 / 3.45 | 0.86x |" in both
    assert "| ≤ before (3.50 s) | yes |" in both
    assert both.index("Profile before (commit bbbbbbb)") < both.index("Profile after (commit aaaaaaa)")
    # in the Speed section: after the end-to-end table, before the GPU part; --out rewrites only that section
    rows = [{"descriptor": "cfog", "threads": 2, "rc": 0, "seconds": [4.0], "match_s": 1.0, "estimate_s": 2.0,
             "peak_mb": 700.0, "rmse_px": 0.01}]
    text = speed.section(rows, None, "docs/gpu_check.json", 2, 3, after, before)
    assert text.index("| `cfog` | 4.0 |") < text.index("**In process") < text.index("**GPU")
    assert "Not measured (`--no-inprocess`)" in speed.section(rows, None, "docs/gpu_check.json", 2, 3)
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# B\n\n## Scale\n\nscale text\n\n## Speed\n\nold\n\n## Later\n\nlater text\n")
    scale.write_section(doc, text, "Speed")
    out = doc.read_text()
    assert "old" not in out and "scale text" in out and "later text" in out and out.count("**In process") == 1


def test_child_gets_the_engine_root_first_and_the_thread_variables():
    env = sip.child_env(2, Path("/some/root"))
    assert env["PYTHONPATH"].split(os.pathsep)[0] == "/some/root"
    assert all(env[k] == "2" for k in sip.THREAD_ENV) and env[sip.CHILD_FLAG] == "1"
    assert sip.child_env(2, None).get("PYTHONPATH") == os.environ.get("PYTHONPATH")


@pytest.mark.slow
def test_measure_times_estimate_on_the_256_pair(tmp_path):
    """One real measurement: warm-up + one timed `estimate` on the 256 px S2 pair, then a cProfile of one call."""
    shared = _shared()
    data = sip.measure(sizes=(256,), repeats=1, threads=2, profile_top=5, folder=tmp_path, chip=False,
                       shared=shared, log=lambda *_: None)
    json.dumps(data)  # JSON-ready
    assert data["engine_path"].endswith("__init__.py") and data["commit"]
    (row,) = data["pairs"]
    assert row["name"] == "s2_256" and row["error"] is None and len(row["seconds"]) == 1
    assert 0 < row["min_s"] <= row["median_s"] and row["warmup_s"] > 0
    assert all(row["timings_s"][k] >= 0 for k in ("read", "preprocess", "match", "fit"))
    assert row["timings_s"]["match"] > 0 and set(row["match_split_s"]) >= {"coarse", "verify", "refine"}
    assert row["confidence"] > 0.5 and row["decision"]["candidates"] and row["true_error"]["max_px"] < 0.5
    assert data["skipped"] and data["skipped"][0]["reason"] == "not asked for"
    prof = data["profile"]
    assert prof["pair"] == "s2_256" and len(prof["top"]) == 5 and prof["total_tottime_s"] > 0
    own = [e["tottime"] for e in prof["top"]]
    assert own == sorted(own, reverse=True) and all({"function", "ncalls", "tottime", "cumtime"} <= set(e)
                                                   for e in prof["top"])
    assert "| `s2_256` | 256 x 256 |" in sip.section_part(data)
