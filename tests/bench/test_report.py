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
