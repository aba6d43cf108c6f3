"""`make bench-speed` (bench/speed.py): the end-to-end CPU timing and the recorded GPU check beside it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import scale, speed

ROOT = Path(__file__).resolve().parents[2]
GPU_JSON = ROOT / "docs" / "gpu_check.json"


def _row(name: str, seconds: list[float], rc: int = 0) -> dict:
    return {"descriptor": name, "threads": 2, "rc": rc, "seconds": seconds, "match_s": 1.0, "estimate_s": 2.0,
            "peak_mb": 700.0, "rmse_px": 0.01}


def test_gpu_table_is_read_from_the_recorded_check():
    """Every pair of docs/gpu_check.json appears with its CPU and CUDA seconds and the speed-up between them."""
    gpu = json.loads(GPU_JSON.read_text())
    text = speed.gpu_table(gpu)
    for name, p in gpu["pairs"].items():
        c, g = p["cpu"]["seconds"], p["cuda"]["seconds"]
        line = next(x for x in text.splitlines() if x.startswith(f"| {name} |"))
        assert f"| {c:.2f} | {g:.2f} | {c / g:.1f}x |" in line
        assert line.rstrip().endswith("yes |" if g < speed.LIMIT_GPU_S else "no |")


def test_section_says_which_descriptors_miss_the_cpu_limit():
    rows = [_row("cfog", [4.0, 3.5, 3.9]), _row("hsscl", [12.0, 11.0, 13.0]), _row("hybrid", [1.0], rc=3)]
    text = speed.section(rows, None, "docs/gpu_check.json", 2, 3)
    assert "| `cfog` | 3.9 | 3.5 |" in text and text.count("| no |") == 2
    assert "Over 10 s: hsscl; failed: hybrid." in text
    assert "No recorded GPU check" in text
    ok = speed.section(rows[:1], json.loads(GPU_JSON.read_text()), "docs/gpu_check.json", 2, 3)
    assert "All 1 descriptors stay within 10 s" in ok and "H100" in ok


def test_speed_section_replaces_only_itself(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmark\n\nrows\n\n## Scale\n\nscale text\n\n## Speed\n\nold speed\n")
    scale.write_section(doc, "## Speed\n\nnew speed\n", "Speed")
    text = doc.read_text()
    assert "old speed" not in text and "new speed" in text and "## Scale\n\nscale text" in text
    scale.write_section(doc, "## Scale\n\nnew scale\n")  # the scale benchmark's own call is unchanged
    assert "scale text" not in doc.read_text() and "new speed" in doc.read_text()


@pytest.mark.slow
def test_measure_runs_the_cli_end_to_end_on_the_1024_pair(tmp_path, monkeypatch):
    """One real run: `hsscl coregister` on the scale benchmark's 1024 px pair of real Sentinel-2 blocks."""
    shared = scale.shared_root()
    if not all((shared / scale.AROSICS / name).exists() for name, _, _ in scale.SOURCE_BLOCKS):
        pytest.skip(f"../shared/data not found: the Sentinel-2 scenes of {scale.AROSICS} are not in {shared}")
    monkeypatch.setattr(speed, "WORK", tmp_path)
    monkeypatch.setattr(speed, "make_pair", lambda folder, size: scale.make_pair(folder, size, shared))
    row = speed.measure("cfog", threads=2, repeats=1)
    assert row["rc"] == 0 and len(row["seconds"]) == 1 and row["used"] == "cfog"
    assert row["rmse_px"] < 0.1 and row["tiepoints"] > 50
    assert 0 < row["match_s"] < row["estimate_s"] < row["seconds"][0]
    assert not (tmp_path / "speed_cfog").exists()  # outputs are removed after each run
