"""The benchmark report: results split by how exact each case's ground truth is (``cases.GT_CLASSES``)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench import cases as C
from bench import heldout as HO
from bench import report

needs_data = pytest.mark.skipif(not (C.DATA / "SOURCES.md").exists(),
                                reason=f"shared data not found at {C.DATA} (set HSSCL_BENCH_DATA)")


def _one_product(src: C.Source) -> bool:
    """Both images read from one Sentinel-2 product: one file, or files of one product folder."""
    images = [Path(f) for f in src.files if Path(f).suffix != ".txt"]
    return len({p.parent for p in images}) == 1


@needs_data
@pytest.mark.parametrize("which", ["dev", "heldout"])
def test_ground_truth_classes_follow_the_documented_sources(which):
    """The sub-pixel class is given by what a source is, not by how any tool did on it: every SRIF optical-infrared
    pair (validated affines) and every band pair of one Sentinel-2 product, and nothing else."""
    srcs = C.sources() if which == "dev" else HO.sources()
    for s in srcs:
        assert s.gt_class in C.GT_CLASSES, (s.name, s.gt_class)
        documented = ((s.origin == "srif_li2023_subset" and s.family == "optical-infrared")
                      or (s.family == "multispectral" and _one_product(s)))
        assert (s.gt_class == C.SUBPIXEL) == documented, (s.name, s.gt_class)
    sub = [s.name for s in srcs if s.gt_class == C.SUBPIXEL]
    assert not [s.name for s in srcs if s.gt_class == C.SUBPIXEL and s.family == "SAR-optical"]
    assert len(sub) >= 8, sub


@needs_data
def test_a_cached_case_reports_its_ground_truth_class(tmp_path):
    """Built once, read back from the cache: the class is in both (it describes the case; it does not rebuild it)."""
    src = next(s for s in HO.sources() if s.name == "sen1floods11_Spain_B04_B11")
    built = C.build_case(src, out_root=tmp_path, seed=HO.SEED)
    assert built["gt_class"] == C.SUBPIXEL
    assert built["truth"].endswith("truth.tif")          # the truth raster's path is not overwritten
    meta = tmp_path / src.name / "case.json"
    stamp = meta.stat().st_mtime_ns
    again = C.build_case(src, out_root=tmp_path, seed=HO.SEED)
    assert meta.stat().st_mtime_ns == stamp              # served from the cache
    assert again["gt_class"] == C.SUBPIXEL and again["gt_note"] == src.gt_note


def _row(case, tool, rmse, gt_class, note="a note"):
    return {"case": case, "family": "SAR-optical", "origin": "x", "size": "64x64", "initial_rmse": 10.0,
            "tool": tool, "label": tool, "group": "ours", "threads": 1, "failed": math.isinf(rmse), "rmse": rmse,
            "seconds": 1.0, "peak_mb": 100.0, "warp_floor_s": 0.1, "gt_class": gt_class, "gt_note": note,
            "reason": "refused" if math.isinf(rmse) else ""}


def test_report_splits_results_by_ground_truth_accuracy(tmp_path):
    rows = [_row("a", "probe", 0.4, C.SUBPIXEL), _row("b", "probe", 1.5, C.SUBPIXEL),
            _row("c", "probe", 2.0, C.APPROXIMATE, "identity (registered patches, ±1-6 px)"),
            _row("d", "probe", math.inf, C.APPROXIMATE), _row("e", "probe", 4.0, C.APPROXIMATE)]
    info = {"tools": ["probe"], "machine": {"date": "d", "cpu": "c", "cores": 2, "memory": "m", "python": "p",
                                            "os": "o"}, "quick": False, "set": "dev", "command": "x",
            "n_cases": 5, "seed": 1, "total_seconds": 60.0, "skipped": {}}
    out = tmp_path / "b.md"
    report.write_markdown(rows, info, out)
    text = out.read_text()
    section = text.split("## By ground-truth accuracy")[1].split("## ")[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("| probe")]
    assert lines == ["| probe | sub-pixel | 2 | 50% | 100% | 0.95 | 0 |",
                     "| probe | approximate | 3 | 0% | 33% | 4.00 | 1 |"]
    # the cases table carries each case's ground-truth note and class
    assert "| c | SAR-optical | x | 64x64 | 10.0 | identity (registered patches, ±1-6 px) | approximate |" in text


# ---- refusals and wrong answers; confidence calibration; speed against plain CFOG -----------------------------

INFO = {"machine": {"date": "d", "cpu": "c", "cores": 2, "memory": "m", "python": "p", "os": "o"}, "quick": False,
        "set": "dev", "command": "x", "n_cases": 6, "seed": 1, "total_seconds": 60.0, "skipped": {}}


def _run(case, tool, rmse, refused=False, group="ours", seconds=1.0, **extra):
    row = _row(case, tool, rmse, C.APPROXIMATE)
    row.update(group=group, seconds=seconds, refused=refused, **extra)
    if refused:
        row.update(failed=True, rmse=math.inf, reason="exit code 3: refused")
    return row


def _synthetic_outcomes(tool="probe"):
    # 2 within 3 px, 1 refused, 1 at 4 px, 1 at 9 px, 1 answer covering too little of the overlap (> 5 px)
    cover = _run("f", tool, math.inf)
    cover.update(failed=True, reason="corrected raster covers 12% of the overlap")
    return [_run("a", tool, 0.5), _run("b", tool, 2.9), _run("c", tool, math.inf, refused=True),
            _run("d", tool, 4.0), _run("e", tool, 9.0), cover]


def test_refusals_and_wrong_answers_are_counted_apart():
    rows = _synthetic_outcomes()
    assert [report.outcome(x) for x in rows] == ["ok", "ok", "refused", "off3_5", "off5", "off5"]
    s = report.summarise(rows)
    assert (s["refused"], s["off3_5"], s["off5"]) == (1, 1, 2)
    assert round(s["s3"] * s["n"]) + s["refused"] + s["off3_5"] + s["off5"] == s["n"]
    # rows written before the `refused` field: a coverage failure is an answer, any other failure a refusal
    legacy = [{k: v for k, v in x.items() if k != "refused"} for x in rows]
    assert [report.outcome(x) for x in legacy] == ["ok", "ok", "refused", "off3_5", "off5", "off5"]


def test_headline_and_family_tables_have_the_refused_and_wrong_columns(tmp_path):
    rows = _synthetic_outcomes() + [_run(c, "none", 20.0, group="baseline") for c in "abcdef"]
    out = tmp_path / "b.md"
    report.write_markdown(rows, {**INFO, "tools": ["none", "probe"]}, out)
    text = out.read_text()
    head = text.split("## Headline (all pairs)")[1].split("## ")[0]
    assert "| refused | 3-5 px off, given as success | > 5 px off, given as success |" in head
    line = next(ln for ln in head.splitlines() if ln.startswith("| probe |"))
    assert line == "| probe | 6 | 17% | 33% | 50% | 6.50 | 1 | 1 | 2 | 1.00 | 10× |"
    assert "| – | – | – |" in next(ln for ln in head.splitlines() if ln.startswith("| do nothing |"))
    wrong = text.split("## Our wrong answers")[1].split("\n## ")[0]
    assert "| probe | d | 4.00 | – | – |" in wrong and "| probe | e | 9.00 | – | – |" in wrong
    assert "| probe | c |" not in wrong                                 # a refusal is not a wrong answer
    fam = text.split("## Per tool and family")[1].split("## ")[0]
    assert any(ln.startswith("| **probe** | **all** | 6 |") and "| 1 | 1 | 2 |" in ln for ln in fam.splitlines())


def test_reliability_table_and_brier_score():
    rows = [
        _run("a", "g", 0.5, confidence=0.9, verifier_changed=False, low_confidence=False),   # hit
        _run("b", "g", 2.0, confidence=0.85, verifier_changed=True, low_confidence=False),   # hit
        _run("c", "g", 8.0, confidence=0.7, verifier_changed=False, low_confidence=False),   # miss
        _run("d", "g", 1.0, confidence=0.3, verifier_changed=False, low_confidence=True),    # hit
        _run("e", "g", 12.0, confidence=0.1, verifier_changed=True, low_confidence=True),    # miss
        _run("f", "g", math.inf, refused=True, confidence=0.05, verifier_changed=False),     # no answer: unscored
        _run("h", "g", 1.0, confidence=1.0, verifier_changed=False, low_confidence=False),   # hit, in the top bin
    ]
    rel = report.reliability(rows)
    conf = [0.9, 0.85, 0.7, 0.3, 0.1, 1.0]
    hit = [1, 1, 0, 1, 0, 1]
    assert rel["pairs"] == 6 and rel["refused_with_confidence"] == 1
    assert rel["brier"] == pytest.approx(sum((c - h) ** 2 for c, h in zip(conf, hit)) / 6)
    assert rel["verifier_changed"] == pytest.approx(2 / 7) and rel["low_confidence_kept"] == 2
    by_bin = {b["bin"]: b for b in rel["table"]}
    assert by_bin[(0.0, 0.2)]["pairs"] == 1 and by_bin[(0.0, 0.2)]["within3"] == 0.0
    assert by_bin[(0.2, 0.4)]["pairs"] == 1 and by_bin[(0.2, 0.4)]["within3"] == 1.0
    assert by_bin[(0.4, 0.6)]["pairs"] == 0 and by_bin[(0.4, 0.6)]["mean_conf"] is None
    top = by_bin[(0.8, 1.0)]
    assert top["pairs"] == 3 and top["mean_conf"] == pytest.approx((0.9 + 0.85 + 1.0) / 3) and top["within3"] == 1.0
    assert by_bin[(0.6, 0.8)]["within3"] == 0.0
    assert report.reliability([_run("a", "x", 1.0), _run("b", "x", 2.0, confidence=None)]) is None


def test_calibration_section_and_the_dash_without_confidence(tmp_path):
    rows = [_run("a", "g", 0.5, confidence=0.9, verifier_changed=False), _run("b", "g", 8.0, confidence=0.2),
            _run("a", "old", 0.5), _run("b", "old", 8.0),
            _run("a", "sift", 0.5, group="peer"), _run("b", "sift", 8.0, group="peer")]
    out = tmp_path / "b.md"
    report.write_markdown(rows, {**INFO, "tools": ["sift", "old", "g"]}, out)
    sec = out.read_text().split("## Confidence calibration")[1].split("\n## ")[0]
    assert "| old | no confidence in the reports | – | – | – | – | – |" in sec
    g = next(ln for ln in sec.splitlines() if ln.startswith("| g |"))
    assert g.startswith(f"| g | 2 | 0.55 | 50% | {((0.1 ** 2) + (0.2 ** 2)) / 2:.3f} | 0% (1) |")
    assert "| 0.8-1.0 | 1 | 0.90 | 100% |" in sec and "| 0.0-0.2 | 0 | – | – |" in sec
    assert "sift" not in sec                                            # peers have no confidence rows
    report.write_markdown([r for r in rows if r["tool"] == "sift"], {**INFO, "tools": ["sift"]}, out)
    assert "## Confidence calibration" not in out.read_text()


def test_speed_of_the_default_row_beside_plain_cfog(tmp_path):
    rows = [_run(c, "hsscl", 1.0, seconds=s) for c, s in zip("abc", (4.0, 6.0, 5.0))]
    rows += [_run(c, "plain_cfog", 1.0, group="peer", seconds=s) for c, s in zip("abcd", (2.0, 2.0, 4.0, 9.0))]
    sp = report.speed_vs_plain_cfog(rows)
    assert sp["pairs"] == 3 and sp["ours_s"] == 5.0 and sp["peer_s"] == 2.0
    assert sp["ratio_of_medians"] == pytest.approx(2.5) and sp["median_ratio"] == pytest.approx(2.0)
    out = tmp_path / "b.md"
    report.write_markdown(rows, {**INFO, "tools": ["plain_cfog", "hsscl"]}, out)
    assert "**2.5×** the reference's time" in out.read_text()
    assert report.speed_vs_plain_cfog([r for r in rows if r["tool"] == "hsscl"]) is None


def test_strong_set_report_says_what_it_is(tmp_path):
    from bench import strong as ST

    rows = _synthetic_outcomes()
    out = tmp_path / "b.md"
    report.write_markdown(rows, {**INFO, "tools": ["probe"], "set": "strong", "draws": ST.STRONG_DRAWS.key(),
                                 "csv": str(tmp_path / "b.csv")}, out)
    text = out.read_text()
    assert text.startswith("# Benchmark (strong misregistration)")
    assert "rotation up to 10°, scale up to 10%" in text and "local distortion up to 3 px" in text
    assert "`make bench-strong`" in text


def test_decision_fields_read_from_the_engine_report_or_none():
    from bench.run import decision_fields

    assert decision_fields({"ok": True}) == {"confidence": None, "accepted": None, "low_confidence": None,
                                             "verifier_changed": None, "chosen": None, "threshold": None}
    rep = {"confidence": 0.42, "decision": {"accepted": False, "threshold": 0.5, "low_confidence": True,
                                            "chosen": "learned-cfog", "why": "w", "verifier_changed": True,
                                            "candidates": [{"source": "cfog", "confidence": 0.3}]}}
    got = decision_fields({"ok": True, "report": rep})
    assert got == {"confidence": 0.42, "accepted": False, "low_confidence": True, "verifier_changed": True,
                   "chosen": "learned-cfog", "threshold": 0.5}
