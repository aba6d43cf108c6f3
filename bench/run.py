"""`make bench`: our engine and the tools users would pick instead, on the same cases, in one run.

    .venv/bin/python -m bench.run [--set dev|heldout|strong|heldout-strong] [--quick] [--tools a,b] [--families f,g] [--cases substr,...]
                                  [--out docs/benchmarks.md] [--timeout 120] [--jobs 2 --threads 1]

Each tool runs per case in its own subprocess with a time limit; wall time (including interpreter start
and model loading) and peak RSS (``os.wait4``; Linux counts the launcher's own high-water mark at exec, about 40 MB
for this script, as a floor) are measured. By default two cases run at once, each tool
limited to one thread (the same limit for every tool), so a 2-core machine is used fully; ``--jobs 1
--threads 2`` gives each tool both cores instead. A tool that fails, crashes or times out
counts as a failure for that case and its error is recorded. The error is measured on the truth raster,
independently of what the tool reports (see ``bench/truth.py``).

``--set heldout`` runs the held-out cases instead (``bench/heldout.py``: pairs no dev case uses, their own
seed, case folders in ``.bench/cases_heldout``); the default ``dev`` is the 50 cases we tune on.
``--set strong`` / ``--set heldout-strong`` are the same sources with a stronger misregistration (shift up to 80 px,
±10°, ±10 %, a smooth local distortion up to 3 px; ``bench/strong.py``), in case folders of their own.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "bench"

from bench import cases as C  # noqa: E402
from bench import heldout as HO  # noqa: E402
from bench import strong as ST  # noqa: E402
from bench import truth as T  # noqa: E402
from bench.tools.registry import DEFAULT, TOOLS, thread_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".bench" / "runs"

# --set NAME: (sources, seed, case folder, run folder, raw results' stem, misregistration ranges)
SETS = {
    "dev": (C.select, C.SEED, C.CASES_DIR, WORK, "results", C.DEV_DRAWS),
    "heldout": (HO.select, HO.SEED, HO.CASES_DIR, WORK.with_name("runs_heldout"), "results_heldout", C.DEV_DRAWS),
    "strong": (ST.select, ST.SEED, ST.CASES_DIR, WORK.with_name("runs_strong"), "results_strong", ST.STRONG_DRAWS),
    "heldout-strong": (ST.select_heldout, ST.HELDOUT_SEED, ST.HELDOUT_CASES_DIR,
                       WORK.with_name("runs_heldout_strong"), "results_heldout_strong", ST.STRONG_DRAWS),
}


def run_timed(cmds: list[list[str]], timeout: float, env: dict, log: Path) -> dict:
    """Run commands one after another; wall seconds, peak RSS (MB, max over the commands), rc, timeout."""
    t0 = time.perf_counter()
    peak_kb, rc = 0, 0
    with open(log, "ab") as lf:
        for cmd in cmds:
            left = timeout - (time.perf_counter() - t0)
            p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                 start_new_session=True, cwd=ROOT)
            while True:
                pid, status, ru = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    p.returncode = os.waitstatus_to_exitcode(status)
                    peak_kb = max(peak_kb, ru.ru_maxrss)
                    break
                if time.perf_counter() - t0 > timeout:
                    os.killpg(p.pid, signal.SIGKILL)
                    _, status, ru = os.wait4(p.pid, 0)
                    peak_kb = max(peak_kb, ru.ru_maxrss)
                    return {"seconds": time.perf_counter() - t0, "peak_mb": peak_kb / 1024, "rc": -9,
                            "timeout": True}
                time.sleep(0.02 if left > 1 else 0.005)
            rc = p.returncode
            if rc:
                break
    return {"seconds": time.perf_counter() - t0, "peak_mb": peak_kb / 1024, "rc": rc, "timeout": False}


def warp_floor(case: dict, wd: Path, env: dict) -> float:
    """Seconds `gdalwarp` takes just to resample the target onto the reference grid (bilinear, all bands)
    through the true transform: the floor any co-registration tool's total can be compared with."""
    from osgeo import gdal

    W, H = case["width"], case["height"]
    M = np.array(case["M_target_to_reference"])
    src = gdal.Open(case["target"])
    ref_gt = src.GetGeoTransform() if case["georeferenced"] else (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    R = np.array([[ref_gt[1], ref_gt[2], ref_gt[0]], [ref_gt[4], ref_gt[5], ref_gt[3]], [0, 0, 1]])
    A = R @ M                          # target pixel -> map, through the truth
    vrt = wd / "target_true_georef.vrt"
    ds = gdal.Translate(str(vrt), src, format="VRT")
    ds.SetGeoTransform((A[0, 2], A[0, 0], A[0, 1], A[1, 2], A[1, 0], A[1, 1]))
    ds = None
    te = [ref_gt[0], ref_gt[3] + H * ref_gt[5], ref_gt[0] + W * ref_gt[1], ref_gt[3]]
    out = wd / "warp_floor.tif"
    cmd = ["gdalwarp", "-q", "-overwrite", "-r", "bilinear", "-te", *map(str, te), "-ts", str(W), str(H),
           "-co", "COMPRESS=DEFLATE", str(vrt), str(out)]
    r = run_timed([cmd], 60, env, wd / "warp_floor.log")
    return r["seconds"] if r["rc"] == 0 else float("nan")


def evaluate(case: dict, res: dict) -> dict:
    """Score a tool's output on the truth raster; tie points -> correct matches / precision at 3 px."""
    W, H = case["width"], case["height"]
    mask = np.load(case["eval_mask"])
    out: dict = {}
    if res.get("ref_xy") is not None and len(res.get("ref_xy") or []) > 0:
        n_ok, prec = T.match_quality(T.case_mapping(case).forward, res["ref_xy"], res["tgt_xy"], 3.0)
        out.update(matches=len(res["ref_xy"]), correct3=n_ok, precision3=prec)
    # refused: the tool gave no answer (said no, crashed, timed out); an answer it gave is scored, however far off
    out["refused"] = not res.get("ok", False)
    if not res.get("ok", False):
        out.update(failed=True, reason=res.get("error", "failed"), rmse=float("inf"))
        return out
    try:
        if res.get("warped_truth"):
            warped = T.read_raster(res["warped_truth"])
            if warped.shape[1:] != (H, W):
                raise ValueError(f"corrected truth is {warped.shape[2]}x{warped.shape[1]}, reference {W}x{H}")
            how = "tool's own warp"
        else:
            if res.get("model") is not None:
                Hm = np.array(res["model"], np.float64)
                how = "tool's model"
            else:
                fit = res.get("fit", "robust-affine")
                if fit == "affine":
                    Hm = T.fit_affine(res["ref_xy"], res["tgt_xy"])
                else:
                    Hm, _ = T.fit_affine_robust(res["ref_xy"], res["tgt_xy"])
                how = f"harness {fit} fit"
            warped = T.warp_with_model(T.read_raster(case["truth"]), T.matrix_model(Hm), W, H)
        s = T.score(warped, mask)
    except Exception as e:  # noqa: BLE001 - a bad output is a failure of that tool on that case
        out.update(failed=True, reason=f"evaluation: {type(e).__name__}: {e}", rmse=float("inf"))
        return out
    out.update(rmse=s.rmse, mean_err=s.mean_err, max_err=s.max_err, coverage=s.coverage, failed=s.failed,
               reason=s.reason, warp=how)
    return out


def decision_fields(res: dict) -> dict:
    """Our engine's calibrated confidence and decision (report.json, issue A), when its report carries them;
    None where it does not (engines before issue A, peers)."""
    rep = res.get("report") or {}
    dec = rep.get("decision") if isinstance(rep.get("decision"), dict) else {}
    conf = rep.get("confidence")
    return {"confidence": float(conf) if isinstance(conf, (int, float)) else None,
            "accepted": dec.get("accepted"), "low_confidence": dec.get("low_confidence"),
            "verifier_changed": dec.get("verifier_changed"), "chosen": dec.get("chosen"),
            "threshold": dec.get("threshold")}


def engine_version() -> str:
    """Commit of the checkout and whether the engine had uncommitted changes when the run started."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "engine"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return rev + (" (engine/ with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 ** 2:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": mem, "python": platform.python_version(),
            "os": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="case_set", choices=tuple(SETS), default="dev",
                    help="dev: the 50 cases we tune on (default); heldout: disjoint pairs (bench/heldout.py); "
                         "strong / heldout-strong: the same sources, misregistered further (bench/strong.py)")
    ap.add_argument("--quick", action="store_true", help="about 15 cases (a few per family)")
    ap.add_argument("--tools", default=",".join(DEFAULT), help=f"comma list of {', '.join(TOOLS)}")
    ap.add_argument("--families", default="", help="comma list of families (default: all)")
    ap.add_argument("--cases", default="", help="comma list of case-name substrings")
    ap.add_argument("--out", default="docs/benchmarks.md", help="markdown table ('' to skip the report)")
    ap.add_argument("--csv", default="docs/benchmarks.csv")
    ap.add_argument("--plot", default="docs/img/bench_cdf.png")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per tool and case")
    ap.add_argument("--seed", type=int, default=None,
                    help=f"misregistration draws (default: {C.SEED} dev, {HO.SEED} heldout, {ST.SEED} strong, "
                         f"{ST.HELDOUT_SEED} heldout-strong)")
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="threads per tool, the same for all (default 1)")
    a = ap.parse_args(argv)
    t_start = time.perf_counter()

    names = [t for t in a.tools.split(",") if t]
    unknown = [t for t in names if t not in TOOLS]
    if unknown:
        ap.error(f"unknown tools {unknown}; known: {list(TOOLS)}")
    select, seed, cases_dir, work, raw_stem, draws = SETS[a.case_set]
    if a.seed is None:
        a.seed = seed
    srcs = select(a.quick, [f for f in a.families.split(",") if f] or None,
                  [c for c in a.cases.split(",") if c] or None)
    if not srcs:
        print("[bench] no cases: is shared/data there? (set HSSCL_BENCH_DATA)", file=sys.stderr)
        return 2
    print(f"[bench] {len(srcs)} cases, tools: {', '.join(names)}", flush=True)
    cases = []
    for s in srcs:
        try:
            case = C.build_case(s, out_root=cases_dir, seed=a.seed, draws=draws)
        except (ValueError, OSError, RuntimeError) as e:
            print(f"[bench] case {s.name} skipped: {e}", flush=True)
            continue
        case["_json"] = str(Path(case["truth"]).parent / "case.json")
        case["_threads"] = a.threads
        cases.append(case)

    skipped: dict[str, str] = {}
    tools = []
    for n in names:
        why = TOOLS[n].available()
        if why:
            skipped[n] = why
            print(f"[bench] {n}: cannot run here: {why}", flush=True)
        else:
            tools.append(TOOLS[n])

    env = thread_env(a.threads)
    load0 = os.getloadavg()

    def one_case(case: dict) -> tuple[list[dict], str]:
        rows: list[dict] = []
        wd0 = work / case["id"]
        wd0.mkdir(parents=True, exist_ok=True)
        floor = warp_floor(case, wd0, env)
        line = [f"{case['id'][:34]:34s} init {case['initial_rmse']:5.1f}"]
        for tool in tools:
            wd = wd0 / tool.name
            if wd.exists():
                for p in sorted(wd.rglob("*"), reverse=True):
                    p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
            wd.mkdir(parents=True, exist_ok=True)
            cmds = tool.timed(case, wd)
            t = run_timed(cmds, a.timeout, {**env, **tool.env}, wd / "log.txt") if cmds else \
                {"seconds": 0.0, "peak_mb": 0.0, "rc": 0, "timeout": False}
            answered = t["rc"] in tool.ok_rcs and not t["timeout"]
            if answered:
                post = tool.post(case, wd)
                if post:
                    run_timed(post, a.timeout, {**env, **tool.env}, wd / "log.txt")
            res = tool.collect(case, wd) if not t["timeout"] else {"ok": False, "error": f"timeout {a.timeout:.0f} s"}
            if not answered:
                res = {**res, "ok": False}
            if t["rc"] and not t["timeout"] and not res.get("ok") and \
                    not (res.get("error") and (wd / "result.json").exists()):
                tail = [ln for ln in (wd / "log.txt").read_text(errors="replace").splitlines() if ln.strip()][-1:] \
                    if (wd / "log.txt").exists() else []
                res["error"] = f"exit code {t['rc']}" + (f": {tail[0].strip()[:200]}" if tail else "")
            ev = {**evaluate(case, res), **decision_fields(res)}
            row = {"case": case["id"], "family": case["family"], "origin": case["origin"],
                   "gt_class": case.get("gt_class", C.APPROXIMATE), "gt_note": case.get("gt_note", ""),
                   "georeferenced": case["georeferenced"], "size": f"{case['width']}x{case['height']}",
                   "initial_rmse": case["initial_rmse"], "tool": tool.name, "label": tool.label,
                   "group": tool.group, "threads": a.threads if tool.threads else 0, "jobs": a.jobs, "seconds": t["seconds"],
                   "peak_mb": t["peak_mb"], "warp_floor_s": floor, "timeout": t["timeout"], **ev}
            rows.append(row)
            r = ev.get("rmse", float("inf"))
            line.append(f"{tool.name}={'FAIL' if ev.get('failed') else f'{r:.2f}'}({t['seconds']:.1f}s)")
        return rows, " ".join(line)

    from concurrent.futures import ThreadPoolExecutor

    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        for k, (r, line) in enumerate(ex.map(one_case, cases)):
            rows.extend(r)
            print(f"[bench] {k + 1:3d}/{len(cases)} {line}", flush=True)


    total = time.perf_counter() - t_start
    raw = ROOT / ".bench" / (raw_stem + ("_quick" if a.quick else "") + ".json")
    info = {"set": a.case_set, "draws": draws.key(),
            "sources": sorted({s.origin for s in srcs if any(c["id"] == s.name for c in cases)}), "machine": machine(), "quick": a.quick, "seed": a.seed, "n_cases": len(cases), "tools": names,
            "jobs": a.jobs, "threads": a.threads, "engine": engine_version(), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
            "skipped": skipped, "total_seconds": total, "command": ((f"HSSCL_BENCH_ARGS='{os.environ['HSSCL_BENCH_ARGS']}' " if os.environ.get("HSSCL_BENCH_ARGS") else "")
                        + "python -m bench.run " + " ".join(argv or sys.argv[1:]))}
    raw.write_text(json.dumps({"info": info, "rows": rows}, indent=1, default=float))
    print(f"[bench] {len(rows)} runs in {total / 60:.1f} min; raw results in {raw}", flush=True)
    from bench.report import speed_vs_plain_cfog

    sp = speed_vs_plain_cfog(rows)
    if sp:
        print(f"[bench] time per pair (median, {sp['pairs']} pairs): hsscl {sp['ours_s']:.2f} s, plain CFOG "
              f"{sp['peer_s']:.2f} s: {sp['ratio_of_medians']:.1f}x (median per-pair ratio {sp['median_ratio']:.1f}x)",
              flush=True)
    if a.out:
        from bench import report

        report.write_all(rows, info, ROOT / a.out, ROOT / a.csv if a.csv else None, ROOT / a.plot if a.plot else None)
        print(f"[bench] wrote {a.out}" + (f", {a.csv}" if a.csv else "") + (f", {a.plot}" if a.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
