"""Issue 20's in-process timing: `estimate` on 256, 512 and 1024 px pairs and a 256 px SAR-optical chip, one process.

    .venv/bin/python -m bench.speed_inprocess --json OUT.json [--engine-root DIR] [--repeats 3] [--threads 2]
                                              [--profile-top 10] [--descriptor auto]

Issue 20's targets on 2 CPU cores, in process: a 512 x 512 pair end to end within 1.5 s, 256 x 256 within
0.8 s, 1024 x 1024 no slower than before. What is timed is ``hsscl.engine.pipeline.estimate(reference, target,
CoregConfig(threads=2, keep_best_guess=True, device="cpu"))``: reading, preprocessing, matching (with every
alternative the decision asks for) and fitting, without interpreter start, imports or writing outputs.

- **Pairs.** The scale benchmark's pairs (``bench/scale.py``: real Sentinel-2 10 m blocks, a known similarity,
  georeferenced GeoTIFFs) at 256, 512 and 1024 px, built under ``.bench/scale/`` when missing; the true error
  of each estimate (against the known similarity) is recorded, so that a fast wrong answer shows. Beside them
  a 256 x 256 SAR-optical chip of the benchmark cases (``CHIPS``: the first that exists; skipped, with the
  reason, when none does).
- **Timing.** Per pair one warm-up call (weights, caches), then ``--repeats`` timed calls: median and fastest
  wall seconds, and from the last call the report's stage times (``timings_s``), the matching stage's own split
  (``matching.seconds``: coarse / verify / refine), the confidence and the alternatives the decision weighed.
  ``NotEnoughMatchesError`` (or any other error) is recorded in the row, not raised.
- **Profile.** cProfile of one more (warm) call on the chip (on the 256 px pair when there is no chip): the top
  ``--profile-top`` functions by own time, and the total.
- **Process.** The measurement runs in a child interpreter started with ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``
  / ``OPENBLAS_NUM_THREADS`` set to ``--threads`` (they must be set before numpy and torch load). With
  ``--engine-root DIR`` (a folder holding ``hsscl``, a directory or a link to another checkout of this
  repository) the child gets ``PYTHONPATH=DIR``, so that ``import hsscl`` resolves there: the "before" engine
  of an A/B. The JSON records ``engine_path`` (``hsscl.__file__``) and the checkout's commit.

``python -m bench.speed`` (``make bench-speed``) runs this for the current checkout and renders the JSON, with a
"before" JSON written by ``--engine-root`` beside it when given ``--before-json`` (:func:`section_part`).
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # `python bench/speed_inprocess.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "bench"

from .scale import ROOT, WORK, make_pair, truth_matrix

SIZES = (256, 512, 1024)
TARGET_S = {256: 0.8, 512: 1.5}  # issue 20; 1024 px: no slower than before
#: 256 px SAR-optical chips of the benchmark cases, first existing one used
CHIPS = (".bench/cases_heldout_strong/3mos_SEN_city_03", ".bench/cases_strong/3mos_SEN_city_03",
         ".bench/cases_heldout/3mos_SEN_city_03", ".bench/cases_strong/3mos_SEN_city_00",
         ".bench/cases/3mos_SEN_city_00")
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CHILD_FLAG = "HSSCL_SPEED_INPROCESS_CHILD"


# ----------------------------------------------------------------------------------------------- inputs


def find_chip(root: Path = ROOT) -> tuple[dict | None, str]:
    """The first existing 256 px SAR-optical case of ``CHIPS`` (its case.json, paths filled in) and a note."""
    for rel in CHIPS:
        folder = root / rel
        case_json = folder / "case.json"
        if not case_json.exists():
            continue
        case = json.loads(case_json.read_text())
        ref, tgt = folder / "reference.png", folder / "target.png"
        if case.get("family") != "SAR-optical" or (case.get("width"), case.get("height")) != (256, 256) \
                or not (ref.exists() and tgt.exists()):
            continue
        return {"id": case.get("id", folder.name), "folder": rel, "reference": str(ref), "target": str(tgt)}, ""
    return None, f"no 256 px SAR-optical case found (looked for {', '.join(CHIPS)})"


def all_chips(case: dict, root: Path = ROOT) -> list[dict]:
    """Every 256 px SAR-optical case in the folder of cases that ``case`` (:func:`find_chip`) comes from."""
    out = []
    for cj in sorted((root / case["folder"]).parent.glob("*/case.json")):
        c = json.loads(cj.read_text())
        ref, tgt = cj.parent / "reference.png", cj.parent / "target.png"
        if c.get("family") == "SAR-optical" and (c.get("width"), c.get("height")) == (256, 256) \
                and ref.exists() and tgt.exists():
            out.append({"id": c.get("id", cj.parent.name), "reference": str(ref), "target": str(tgt)})
    return out


def time_chips(chips: list[dict], config) -> dict:
    """One (warm) ``estimate`` call on each chip: the median over the chips, as issue 20's bar counts them."""
    seconds, confs, second, wider, refused = [], [], 0, 0, 0
    for c in chips:
        s, est, err = _call(c["reference"], c["target"], config)
        seconds.append(s)
        if est is None:
            refused += 1
            continue
        rep = est.report
        confs.append(rep.get("confidence") or 0.0)
        second += len((rep.get("decision") or {}).get("candidates") or []) > 1
        wider += bool((rep.get("search") or {}).get("wider"))
    return {"name": "sar_optical_chips", "kind": f"all {len(chips)} 256 px SAR-optical chips of the folder, "
            "one call each", "size": 256, "seconds": [round(x, 4) for x in seconds],
            "median_s": round(statistics.median(seconds), 4), "min_s": round(min(seconds), 4),
            "max_s": round(max(seconds), 4), "confidence": round(statistics.median(confs), 4) if confs else None,
            "error": f"{refused} refused" if refused else None,
            "chips": {"n": len(chips), "more_than_one_alternative": second, "wider_search": wider}}


IMPORTS = {"torch": "import torch",
           "plain implementation's": "import numpy, scipy.ndimage, scipy.fft, osgeo.gdal",
           "hsscl pipeline (torch included)": "import hsscl.engine.pipeline, hsscl.engine.matching.verify"}


def import_costs(repeats: int = 3) -> dict:
    """Fresh interpreters timing what a command-line run pays before any work (median of ``repeats``): torch
    alone, what a plain numpy/scipy/GDAL implementation imports, and the engine's pipeline module."""
    out = {}
    for name, stmt in IMPORTS.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-c", stmt], cwd=ROOT, capture_output=True)
            times.append(time.perf_counter() - t0)
            if r.returncode != 0:
                break
        out[name] = round(statistics.median(times), 3) if r.returncode == 0 else None
    return out


def _model_error(model, size: int, n: int = 41) -> dict:
    """|model(q) - T(q)| in pixels at an n x n grid of reference positions (as ``bench.scale.true_error``)."""
    m = truth_matrix(size)
    u = np.linspace(0.02 * size, 0.98 * size, n)
    q = np.stack(np.meshgrid(u, u), -1).reshape(-1, 2)
    t = q @ m[:, :2].T + m[:, 2]
    inside = ((t >= 0) & (t <= size)).all(1)
    e = np.hypot(*(np.asarray(model(q[inside])) - t[inside]).T)
    return {"rmse_px": float(np.sqrt(np.mean(e ** 2))), "max_px": float(e.max())}


# ----------------------------------------------------------------------------------------------- measuring


def make_config(threads: int, descriptor: str = "auto"):
    """``CoregConfig(threads, keep_best_guess=True, device="cpu")``, leaving out what an older engine lacks."""
    from dataclasses import fields

    from hsscl.engine.config import CoregConfig

    names = {f.name for f in fields(CoregConfig)}
    kw = {"threads": threads, "keep_best_guess": True, "device": "cpu", "descriptor": descriptor}
    return CoregConfig(**{k: v for k, v in kw.items() if k in names})


def _call(ref: str, tgt: str, config) -> tuple[float, object, str | None]:
    """One ``estimate`` call: wall seconds, the estimate (or None) and the error (or None)."""
    from hsscl.engine.errors import NotEnoughMatchesError
    from hsscl.engine.pipeline import estimate

    t0 = time.perf_counter()
    try:
        est = estimate(ref, tgt, config)
    except NotEnoughMatchesError as err:
        return time.perf_counter() - t0, None, f"NotEnoughMatchesError: {err}"
    except Exception as err:  # noqa: BLE001 - a benchmark records failures instead of stopping
        return time.perf_counter() - t0, None, f"{type(err).__name__}: {err}"
    return time.perf_counter() - t0, est, None


def time_pair(name: str, kind: str, ref: str, tgt: str, config, repeats: int, size: int,
              truth_size: int | None = None) -> dict:
    """One warm-up call, then ``repeats`` timed calls of ``estimate`` on one pair."""
    row: dict = {"name": name, "kind": kind, "size": size, "reference": ref, "target": tgt}
    warm, _, err = _call(ref, tgt, config)
    row["warmup_s"] = round(warm, 4)
    seconds, est = [], None
    for _ in range(max(1, repeats)):
        s, est, err = _call(ref, tgt, config)
        seconds.append(s)
    row.update(seconds=[round(s, 4) for s in seconds], median_s=round(statistics.median(seconds), 4),
               min_s=round(min(seconds), 4), error=err)
    if est is None:
        return row
    rep = est.report
    dec = rep.get("decision") or {}
    row.update(timings_s=rep.get("timings_s", {}), match_split_s=(rep.get("matching") or {}).get("seconds"),
               confidence=rep.get("confidence"), descriptor=rep.get("descriptor"),
               decision={"chosen": dec.get("chosen"), "accepted": dec.get("accepted"),
                         "low_confidence": dec.get("low_confidence"), "candidates": dec.get("candidates", [])},
               second_opinion=rep.get("second_opinion"), search=rep.get("search"),
               model=(rep.get("model") or {}).get("kind"), inliers=(rep.get("counts") or {}).get("inliers"))
    if truth_size is not None:
        row["true_error"] = _model_error(est.correction.model, truth_size)
    return row


def _short(path: str, roots: list[Path]) -> str:
    """A code path below the engine checkout, this repository or site-packages, else as it is."""
    for r in roots:
        rs = str(r).rstrip("/") + "/"
        if path.startswith(rs):
            return path[len(rs):]
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    return path


def profile_call(ref: str, tgt: str, config, top: int, roots: list[Path]) -> dict:
    """cProfile of one ``estimate`` call: the ``top`` functions by own time (tottime), the totals."""
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    _, _, err = _call(ref, tgt, config)
    prof.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(prof)
    entries = []
    for (file, line, func), (cc, nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        where = f"{_short(file, roots)}:{line}({func})" if file != "~" else func
        entries.append({"function": where, "ncalls": nc, "primitive_calls": cc, "tottime": round(tt, 4),
                        "cumtime": round(ct, 4)})
    entries.sort(key=lambda e: -e["tottime"])
    return {"top": entries[:top], "total_tottime_s": round(st.total_tt, 4),  # type: ignore[attr-defined]
            "wall_s": round(wall, 4), "functions": len(entries), "error": err}


def _git(cwd: Path, *args: str) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else ""


def engine_info() -> dict:
    """Where ``hsscl`` was imported from, and that checkout's commit (``+`` when its engine/ has changes)."""
    import hsscl

    path = Path(hsscl.__file__).parent
    real = path.resolve()
    commit = _git(real, "rev-parse", "--short", "HEAD")
    dirty = bool(_git(real, "status", "--porcelain", "--", "engine"))
    return {"engine_path": hsscl.__file__, "engine_checkout": str(real), "commit": commit, "engine_dirty": dirty}


def measure(sizes: tuple[int, ...] = SIZES, repeats: int = 3, threads: int = 2, profile_top: int = 10,
            folder: Path = WORK, chip: bool = True, shared: Path | None = None, descriptor: str = "auto",
            log=print) -> dict:
    """Everything of the module docstring, in this process; a JSON-ready dict."""
    import torch

    info = engine_info()
    config = make_config(threads, descriptor)
    out: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **info,
                 "python": platform.python_version(), "torch": torch.__version__,
                 "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(), "threads": threads,
                 "torch_threads": None, "env_threads": {k: os.environ.get(k) for k in THREAD_ENV},
                 "repeats": repeats, "descriptor": descriptor, "config": config.to_dict(),
                 "load_avg_start": round(os.getloadavg()[0], 2), "pairs": [], "skipped": []}
    roots = [Path(info["engine_path"]).parent, Path(info["engine_checkout"]), ROOT]
    for size in sizes:
        ref, tgt = make_pair(folder, size, shared)
        row = time_pair(f"s2_{size}", "Sentinel-2 mosaic, known similarity", str(ref), str(tgt), config, repeats,
                        size, truth_size=size)
        out["pairs"].append(row)
        log(json.dumps({k: row.get(k) for k in ("name", "median_s", "min_s", "confidence", "error")}))
    out["torch_threads"] = torch.get_num_threads()
    case, why = find_chip() if chip else (None, "not asked for")
    if case is not None:
        row = time_pair(f"sar_optical_{case['id']}", f"SAR-optical chip ({case['folder']})", case["reference"],
                        case["target"], config, repeats, 256)
        out["pairs"].append(row)
        log(json.dumps({k: row.get(k) for k in ("name", "median_s", "min_s", "confidence", "error")}))
        prof_pair = row
        chips = all_chips(case)
        if len(chips) > 1:
            row = time_chips(chips, config)
            out["pairs"].append(row)
            log(json.dumps({k: row.get(k) for k in ("name", "median_s", "min_s", "max_s", "chips")}))
    else:
        out["skipped"].append({"name": "sar_optical_256", "reason": why})
        log(f"SAR-optical chip skipped: {why}")
        prof_pair = next((r for r in out["pairs"] if r["size"] == 256), out["pairs"][0] if out["pairs"] else None)
    if prof_pair is not None and profile_top > 0:
        out["profile"] = {"pair": prof_pair["name"],
                          **profile_call(prof_pair["reference"], prof_pair["target"], config, profile_top, roots)}
    out["import_s"] = import_costs()
    out["load_avg"] = round(os.getloadavg()[0], 2)
    return out


# ----------------------------------------------------------------------------------------------- rendering


def _fmt(v, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def _alternatives(r: dict) -> str:
    if r.get("chips"):
        c = r["chips"]
        return (f"{c['more_than_one_alternative']} of {c['n']} needed more than one alternative, "
                f"{c['wider_search']} the wider search; {r['min_s']:.2f}-{r['max_s']:.2f} s")
    cands = (r.get("decision") or {}).get("candidates") or []
    text = ", ".join(f"{c.get('source', '?')} {c.get('confidence', float('nan')):.2f}" for c in cands) or "–"
    if (r.get("search") or {}).get("wider"):
        text += " (wider search)"
    return text


def target_of(r: dict, before: dict | None) -> tuple[str, str]:
    """Issue 20's target for a row and whether it is met ("yes" / "no" / "–")."""
    if r.get("error") and r.get("confidence") is None:
        return "–", "no"
    if r["size"] in TARGET_S:
        lim = TARGET_S[r["size"]]
        return f"≤ {lim:g} s", "yes" if r["median_s"] <= lim else "no"
    b = _row_of(before, r["name"])
    if b is None or b.get("median_s") is None:
        return "no slower than before", "–"
    return f"≤ before ({b['median_s']:.2f} s)", "yes" if r["median_s"] <= b["median_s"] else "no"


def _row_of(data: dict | None, name: str) -> dict | None:
    return next((r for r in (data or {}).get("pairs", []) if r["name"] == name), None)


def pairs_table(after: dict, before: dict | None = None) -> str:
    head = ["pair", "size", "median s", "fastest s"]
    if before:
        head += ["before: median / fastest s", "change"]
    head += ["match s (coarse / verify / refine)", "confidence", "alternatives", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in after.get("pairs", []):
        cells = [f"`{r['name']}`", f"{r['size']} x {r['size']}", f"{r['median_s']:.2f}", f"{r['min_s']:.2f}"]
        if before:
            b = _row_of(before, r["name"])
            if b is None:
                cells += ["–", "–"]
            else:
                cells += [f"{b['median_s']:.2f} / {b['min_s']:.2f}", f"{r['median_s'] / b['median_s']:.2f}x"]
        sp = r.get("match_split_s") or {}
        match = (r.get("timings_s") or {}).get("match")
        split = " / ".join(_fmt(sp.get(k)) for k in ("coarse", "verify", "refine")) if sp else "–"
        cells.append(f"{_fmt(match)} ({split})" if match is not None else "–")
        conf = _fmt(r.get("confidence"), ".3f")
        if r.get("error"):
            conf += " (error)"
        cells += [conf, _alternatives(r), *target_of(r, before)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def profile_table(data: dict) -> str:
    p = data.get("profile")
    if not p:
        return "No profile recorded."
    lines = [f"cProfile of one warm `estimate` call on `{p['pair']}`: {p['wall_s']:.2f} s under the profiler "
             f"(own time of all {p['functions']} functions {p['total_tottime_s']:.2f} s; the profiler slows "
             "Python-heavy code down), top entries by own time:", "",
             "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
    for e in p["top"]:
        calls = str(e["ncalls"]) if e["ncalls"] == e["primitive_calls"] else f"{e['ncalls']}/{e['primitive_calls']}"
        fn = e["function"].replace("|", "\\|")
        lines.append(f"| `{fn}` | {calls} | {e['tottime']:.3f} | {e['cumtime']:.3f} |")
    return "\n".join(lines)


def _engine(data: dict) -> str:
    dirty = " with uncommitted engine changes" if data.get("engine_dirty") else ""
    return f"commit {data.get('commit') or '?'}{dirty}"


def _timed(d: dict) -> str:
    loads = [v for v in (d.get("load_avg_start"), d.get("load_avg")) if v is not None]
    load = ("load average " + " at the start and ".join(f"{v:.1f}" for v in loads) + " at the end"
            if loads else "load average not recorded")
    busy = ": above 2, other work shared the cores and inflated the times" if loads and max(loads) > 2 else ""
    return (f"{d['threads']} threads (torch {d.get('torch_threads')}), {d['repeats']} timed calls per pair "
            f"after one warm-up, {load}{busy}")


def section_part(after: dict | None, before: dict | None = None, failed: str = "") -> str:
    """The "In process (issue 20's targets)" part of the Speed section."""
    title = "**In process (issue 20's targets)**"
    if after is None:
        return f"{title}\n\nNot measured{': ' + failed if failed else ' (`--no-inprocess`)'}."
    lines = [title, "",
             f"`python -m bench.speed_inprocess`: `estimate` (read, preprocess, match, fit; no interpreter start, "
             f"imports or writing) in one process, engine at {_engine(after)}, {after['date']}; {_timed(after)}. "
             f"Issue 20's targets on 2 CPU cores: 256 x 256 within {TARGET_S[256]:g} s, 512 x 512 within "
             f"{TARGET_S[512]:g} s, 1024 x 1024 no slower than before. The `s2_*` pairs are the scale benchmark's "
             "(real Sentinel-2 blocks, a known similarity); the SAR-optical chip is a benchmark case."]
    if before:
        lines += ["", f"Before: engine at {_engine(before)} (`{before.get('engine_checkout', '?')}`), {before['date']}; "
                  f"{_timed(before)}. Times measured at different moments on a shared machine compare only roughly."]
    lines += ["", pairs_table(after, before)]
    errs = [r for r in after.get("pairs", []) if r.get("error")]
    for r in errs:
        lines.append(f"\n`{r['name']}`: {r['error']}")
    for s in after.get("skipped", []):
        lines += ["", f"`{s['name']}` skipped: {s['reason']}."]
    true = [r for r in after.get("pairs", []) if r.get("true_error")]
    if true:
        worst = max(r["true_error"]["max_px"] for r in true)
        lines += ["", f"True error of the estimates on the `s2_*` pairs: at most {worst:.3f} px (all check positions)."]
    imp = after.get("import_s")
    if imp:
        lines += ["", "What a command-line run pays before any work (a fresh interpreter, median of 3): "
                  + "; ".join(f"{k} imports {_fmt(v)} s" for k, v in imp.items())
                  + ". The command-line bar (at most 1.2x the plain implementation's time a pair) cannot be met "
                  "while the matcher needs torch: its import alone is about the plain implementation's whole run."]
    if before:
        lines += ["", f"Profile before ({_engine(before)}):", "", profile_table(before)]
    lines += ["", f"Profile after ({_engine(after)}):" if before else f"Profile ({_engine(after)}):", "",
              profile_table(after)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main


def child_env(threads: int, engine_root: Path | None) -> dict:
    env = {**os.environ, **{k: str(threads) for k in THREAD_ENV}, CHILD_FLAG: "1"}
    if engine_root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(engine_root)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--json", required=True, help="where the results are written")
    ap.add_argument("--engine-root", help="folder holding `hsscl` (another checkout): measure that engine")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile-top", type=int, default=10)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="S2 pair sizes in px (comma-separated)")
    ap.add_argument("--no-chip", action="store_true", help="leave out the SAR-optical chip")
    ap.add_argument("--descriptor", default="auto")
    ns = ap.parse_args(argv)
    root = Path(ns.engine_root).resolve() if ns.engine_root else None
    if root is not None and not (root / "hsscl" / "__init__.py").exists():
        ap.error(f"--engine-root {ns.engine_root}: no hsscl/__init__.py in it")
    if not os.environ.get(CHILD_FLAG):  # a child with the thread variables set before numpy / torch load
        cmd = [sys.executable, "-m", "bench.speed_inprocess", "--json", str(Path(ns.json).resolve()),
               "--repeats", str(ns.repeats), "--threads", str(ns.threads), "--profile-top", str(ns.profile_top),
               "--sizes", ns.sizes, "--descriptor", ns.descriptor, *(["--no-chip"] if ns.no_chip else []),
               *(["--engine-root", str(root)] if root else [])]
        return subprocess.run(cmd, cwd=ROOT, env=child_env(ns.threads, root)).returncode
    data = measure(tuple(int(v) for v in ns.sizes.split(",") if v), ns.repeats, ns.threads, ns.profile_top,
                   chip=not ns.no_chip, descriptor=ns.descriptor)
    if root is not None and not Path(data["engine_path"]).resolve().is_relative_to((root / "hsscl").resolve()):
        print(f"hsscl was imported from {data['engine_path']}, not from {root / 'hsscl'}", file=sys.stderr)
        return 2
    data["engine_root"] = str(root) if root else None
    Path(ns.json).parent.mkdir(parents=True, exist_ok=True)
    Path(ns.json).write_text(json.dumps(data, indent=2))
    print(section_part(data))
    return 0 if not any(r.get("error") for r in data["pairs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
