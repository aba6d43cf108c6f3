"""The strong misregistration sets: the dev and held-out sources, misregistered further.

``--set strong`` reads the SAME sources as the dev set (``cases.sources()``) and ``--set heldout-strong`` those of
the held-out set (``heldout.sources()``), each with its own seed (dev seed + 2, + 3) and case folders
(``.bench/cases_strong``, ``.bench/cases_heldout_strong``). Ranges (``STRONG_DRAWS``): shift up to 15 % of the
smaller side and at most 80 px, rotation up to ±10°, scale up to ±10 %, and a smooth local distortion whose
largest displacement is drawn up to 3 px (``truth.Distortion``: a few plane waves of 0.5-1.5 cycles across the
image). The true mapping is then non-affine; the truth raster holds it exactly at every target pixel centre,
so the error is measured as on the other sets (``bench/truth.py``).

    .venv/bin/python -m bench.run --set strong --tools none,plain_cfog,hsscl,hsscl_guess      # or `make bench-strong`
    .venv/bin/python -m bench.run --set heldout-strong ...                                  # `make bench-heldout-strong`
"""
from __future__ import annotations

from pathlib import Path

from . import cases as C
from . import heldout as HO

STRONG_DRAWS = C.Draws(max_shift=80.0, max_rot=10.0, max_scale=0.10, shift_cap_fraction=0.15, max_distortion=3.0)
SEED = C.SEED + 2
HELDOUT_SEED = C.SEED + 3
CASES_DIR = Path(__file__).resolve().parents[1] / ".bench" / "cases_strong"
HELDOUT_CASES_DIR = Path(__file__).resolve().parents[1] / ".bench" / "cases_heldout_strong"


def select(quick: bool = False, families: list[str] | None = None, names: list[str] | None = None) -> list[C.Source]:
    return C.select(quick, families, names)


def select_heldout(quick: bool = False, families: list[str] | None = None,
                   names: list[str] | None = None) -> list[C.Source]:
    return HO.select(quick, families, names)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="write the strong benchmark cases into .bench/cases_strong "
                                             "(--heldout: .bench/cases_heldout_strong)")
    ap.add_argument("--heldout", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    out, seed = (HELDOUT_CASES_DIR, HELDOUT_SEED) if a.heldout else (CASES_DIR, SEED)
    for s in (select_heldout if a.heldout else select)(a.quick):
        m = C.build_case(s, out_root=out, seed=seed, force=a.force, draws=STRONG_DRAWS)
        print(f"{m['id']:40s} {m['family']:24s} {m['width']}x{m['height']} init {m['initial_rmse']:.1f} px")
