"""The held-out benchmark set is disjoint from the dev set: no shared image file, no shared case name."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from bench import cases as C
from bench import heldout as HO

needs_data = pytest.mark.skipif(not (C.DATA / "SOURCES.md").exists(),
                                reason=f"shared data not found at {C.DATA} (set HSSCL_BENCH_DATA)")


@needs_data
def test_heldout_and_dev_share_no_file_and_no_name():
    dev, held = C.sources(), HO.sources()
    assert len(dev) == 50, "the dev set changed"
    assert len(held) >= 25
    dev_names, held_names = {s.name for s in dev}, {s.name for s in held}
    assert len(held_names) == len(held), "duplicate held-out case names"
    assert not dev_names & held_names
    dev_files = {Path(f).resolve() for s in dev for f in s.files}
    held_files = {Path(f).resolve() for s in held for f in s.files}
    assert not dev_files & held_files, sorted(dev_files & held_files)


@needs_data
def test_heldout_images_are_not_dev_images_under_another_name():
    """Compare contents too (a byte-identical copy under another path would slip past the path check)."""
    def digest(p: Path) -> str:
        return hashlib.sha256(p.read_bytes()).hexdigest()

    dev = {digest(Path(f)) for s in C.sources() for f in s.files if Path(f).suffix != ".txt"}
    for s in HO.sources():
        for f in s.files:
            if Path(f).suffix != ".txt":       # SRIF reuses GT matrices across pairs; images must differ
                assert digest(Path(f)) not in dev, (s.name, f)


@needs_data
def test_heldout_reads_no_file_the_dev_readers_open():
    """Source.files does not list everything a reader opens (e.g. a TerraMesh S2L2A file or the other bands
    of a BigEarthNet patch): trace the files GDAL opens while building every source's images."""
    from osgeo import gdal

    def opened(srcs) -> set[str]:
        seen: set[str] = set()
        orig = gdal.Open

        def spy(path, *a, **k):
            p = str(path)
            if p.startswith("NETCDF:"):
                p = p.split('"')[1]
            seen.add(str(Path(p).resolve()))
            return orig(path, *a, **k)

        gdal.Open = spy
        try:
            for s in srcs:
                s.ref(), s.tgt()
        finally:
            gdal.Open = orig
        return seen

    dev, held = opened(C.sources()), opened(HO.sources())
    assert len(dev) >= 50 and len(held) >= 25, "the spy saw no reads"
    assert not dev & held, sorted(dev & held)


def test_heldout_draws_its_own_seed():
    assert HO.SEED != C.SEED
    assert HO.CASES_DIR != C.CASES_DIR
