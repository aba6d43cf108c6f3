"""The benchmark's outputs: markdown table (docs/benchmarks.md), CSV of every run, error-CDF plot."""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np

from bench.cases import APPROXIMATE, FAMILIES, GT_CLASSES, SUBPIXEL
from bench.tools.registry import TOOLS

CSV_FIELDS = ["case", "family", "origin", "georeferenced", "size", "initial_rmse", "tool", "label", "group",
              "threads", "failed", "rmse", "mean_err", "max_err", "coverage", "matches", "correct3",
              "precision3", "seconds", "peak_mb", "warp_floor_s", "timeout", "warp", "reason", "gt_class",
              "refused", "confidence", "accepted", "low_confidence", "verifier_changed", "chosen"]

# the make target that writes each set's report
TARGETS = {"dev": "make bench", "heldout": "make bench-heldout", "strong": "make bench-strong",
           "heldout-strong": "make bench-heldout-strong"}
CONF_BINS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _f(v, fmt="{:.2f}", none="–"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return fmt.format(v)


def _label(tool: str) -> str:
    """A tool's display label (its name when the registry does not know it)."""
    return TOOLS[tool].label if tool in TOOLS else tool


def _clean(s: str, n: int) -> str:
    """One table cell: no paths of this machine, no pipes, at most n characters."""
    import re

    s = re.sub(r"/\S*/\.bench/\S*?/([^/\s]+)'", r"\1'", str(s))
    s = re.sub(r"see /\S+", "", s)
    return s.replace("|", "/").strip()[:n]


def refused(x: dict) -> bool:
    """The tool gave no answer (said no, crashed, timed out). Rows from before the ``refused`` field: a failure
    other than a result that covered too little of the overlap (an answer, however bad)."""
    if "refused" in x:
        return bool(x["refused"])
    return bool(x.get("failed")) and not str(x.get("reason", "")).startswith("corrected raster covers")


def outcome(x: dict) -> str:
    """One of 'ok' (within 3 px), 'refused', 'off3_5' (3-5 px off) or 'off5' (> 5 px off, or unusable) for one run:
    every pair falls in exactly one. The last two are answers the tool gave as a success."""
    if refused(x):
        return "refused"
    r = x.get("rmse", np.inf) if not x.get("failed") else np.inf
    r = np.inf if r is None else float(r)
    return "ok" if r <= 3 else "off3_5" if r <= 5 else "off5"


def summarise(rows: list[dict]) -> dict:
    n = len(rows)
    r = np.array([x.get("rmse", np.inf) if not x.get("failed") else np.inf for x in rows], float)
    ok = np.isfinite(r)
    m = [x for x in rows if x.get("matches") is not None]
    secs = np.array([x["seconds"] for x in rows], float)
    floors = np.array([x.get("warp_floor_s", np.nan) for x in rows], float)
    outs = [outcome(x) for x in rows]
    return {
        "n": n, "failed": int((~ok).sum()), "refused": outs.count("refused"), "off3_5": outs.count("off3_5"),
        "off5": outs.count("off5"),
        "s1": float((r <= 1).mean()) if n else np.nan, "s3": float((r <= 3).mean()) if n else np.nan,
        "s5": float((r <= 5).mean()) if n else np.nan,
        "median": float(np.median(r)) if n else np.nan,
        "mean": float(r[ok].mean()) if ok.any() else np.nan,
        "correct3": float(np.median([x["correct3"] for x in m])) if m else None,
        "precision3": float(np.mean([x["precision3"] for x in m])) if m else None,
        "sec": float(np.median(secs)) if n else np.nan,
        "peak": float(np.max([x["peak_mb"] for x in rows])) if n else np.nan,
        "floor": float(np.nanmedian(floors)) if np.isfinite(floors).any() else np.nan,
    }


def _table(rows: list[dict], tools: list[str], families: list[str]) -> list[str]:
    head = ("| tool | family | pairs | ≤1 px | ≤3 px | ≤5 px | median RMSE | mean RMSE (completed) | refused | "
            "3-5 px off, given as success | > 5 px off, given as success | "
            "correct matches @3 px (median) | precision @3 px | s / pair (median) | peak MB | threads |")
    out = [head, "|" + "|".join(["---"] * 16) + "|"]
    for t in tools:
        tr = [x for x in rows if x["tool"] == t]
        if not tr:
            continue
        for fam in families + ["all"]:
            fr = tr if fam == "all" else [x for x in tr if x["family"] == fam]
            if not fr:
                continue
            s = summarise(fr)
            label = _label(t)
            name = f"**{label}**" if fam == "all" else label
            out.append(
                f"| {name} | {'**all**' if fam == 'all' else fam} | {s['n']} | {s['s1']:.0%} | {s['s3']:.0%} | "
                f"{s['s5']:.0%} | {_f(s['median'])} | {_f(s['mean'])} | {_wrong_cells(t, s)} | "
                f"{_f(s['correct3'], '{:.0f}')} | {_f(s['precision3'], '{:.0%}')} | {_f(s['sec'], '{:.2f}')} | "
                f"{_f(s['peak'] or None, '{:.0f}')} | {max(x.get('threads', 0) for x in fr) or '–'} |")
    return out


def _wrong_cells(tool: str, s: dict) -> str:
    """The refused / 3-5 px / > 5 px cells ('–' for the do-nothing baseline, which answers nothing)."""
    if tool == "none":
        return "– | – | –"
    return f"{s['refused']} | {s['off3_5']} | {s['off5']}"


def _headline(rows: list[dict], tools: list[str]) -> list[str]:
    head = ("| tool | pairs | ≤1 px | ≤3 px | ≤5 px | median RMSE | refused | 3-5 px off, given as success | "
            "> 5 px off, given as success | s / pair | total / warp floor |")
    out = [head, "|" + "|".join(["---"] * 11) + "|"]
    for t in tools:
        tr = [x for x in rows if x["tool"] == t]
        if not tr:
            continue
        s = summarise(tr)
        ratio = s["sec"] / s["floor"] if s["floor"] and s["sec"] else float("nan")
        out.append(f"| {_label(t)} | {s['n']} | {s['s1']:.0%} | {s['s3']:.0%} | "
                   f"{s['s5']:.0%} | {_f(s['median'])} | {_wrong_cells(t, s)} | {_f(s['sec'])} | "
                   f"{_f(ratio, '{:.0f}×') if t != 'none' else '–'} |")
    return out


def speed_vs_plain_cfog(rows: list[dict], ours: str = "hsscl", peer: str = "plain_cfog") -> dict | None:
    """CLI wall time per pair of our default row beside the plain CFOG peer's, on the pairs both ran in this run:
    medians and the median of the per-pair ratios (ours / peer). None when either row is missing."""
    a = {x["case"]: x["seconds"] for x in rows if x["tool"] == ours}
    b = {x["case"]: x["seconds"] for x in rows if x["tool"] == peer}
    both = sorted(set(a) & set(b))
    if not both:
        return None
    sa, sb = np.array([a[c] for c in both], float), np.array([b[c] for c in both], float)
    ok = sb > 0
    return {"pairs": len(both), "ours_s": float(np.median(sa)), "peer_s": float(np.median(sb)),
            "ratio_of_medians": float(np.median(sa) / np.median(sb)) if np.median(sb) > 0 else float("nan"),
            "median_ratio": float(np.median(sa[ok] / sb[ok])) if ok.any() else float("nan")}


def _speed_line(rows: list[dict]) -> list[str]:
    sp = speed_vs_plain_cfog(rows)
    if sp is None:
        return []
    return [f"**Speed against the plain CFOG reference** (same run, same {sp['pairs']} pairs, same thread limit): "
            f"{_label('hsscl')} (`hsscl coregister`, CLI wall time per pair, interpreter start included; median) "
            f"{sp['ours_s']:.2f} s, {_label('plain_cfog')} {sp['peer_s']:.2f} s: **{sp['ratio_of_medians']:.1f}×** "
            f"the reference's time (median of the per-pair ratios {sp['median_ratio']:.1f}×).", ""]


def reliability(rows: list[dict], bins: tuple = CONF_BINS) -> dict | None:
    """Calibration of a row's ``confidence`` (the probability that the answer is within 3 px) on the pairs that have
    both a confidence and an answer: reliability table, Brier score, share where the verifier changed the choice.
    None when no pair carries a confidence."""
    conf = [x for x in rows if isinstance(x.get("confidence"), (int, float)) and not math.isnan(x["confidence"])]
    if not conf:
        return None
    scored = [x for x in conf if not refused(x)]
    c = np.array([x["confidence"] for x in scored], float)
    hit = np.array([outcome(x) == "ok" for x in scored], float)
    table = []
    for k, (lo, hi) in enumerate(zip(bins[:-1], bins[1:])):
        last = k == len(bins) - 2
        m = (c >= lo) & ((c <= hi) if last else (c < hi))
        table.append({"bin": (lo, hi), "pairs": int(m.sum()),
                      "mean_conf": float(c[m].mean()) if m.any() else None,
                      "within3": float(hit[m].mean()) if m.any() else None})
    vc = [x["verifier_changed"] for x in rows if isinstance(x.get("verifier_changed"), bool)]
    low = [x["low_confidence"] for x in scored if isinstance(x.get("low_confidence"), bool)]
    return {"pairs": len(scored), "with_confidence": len(conf), "refused_with_confidence": len(conf) - len(scored),
            "brier": float(np.mean((c - hit) ** 2)) if len(scored) else None,
            "mean_conf": float(c.mean()) if len(scored) else None,
            "within3": float(hit.mean()) if len(scored) else None,
            "verifier_changed": float(np.mean(vc)) if vc else None, "verifier_n": len(vc),
            "low_confidence_kept": int(sum(low)), "table": table}


def _calibration(rows: list[dict], tools: list[str]) -> list[str]:
    ours = [t for t in tools if any(x["tool"] == t and x.get("group") == "ours" for x in rows)]
    if not ours:
        return []
    out = ["## Confidence calibration", "",
           "Our engine's `confidence` (report.json) is the probability that its alignment is within 3 px. Per HSSCL "
           "row, over the pairs whose report carries a confidence and that have an answer (refusals have nothing to "
           "measure; the best-guess row `--keep-best-guess` answers every pair): the share within 3 px per "
           "confidence bin (a calibrated confidence has it close to the bin's mean confidence), the Brier score "
           "(mean of (confidence − within 3 px)², 0 is perfect, 0.25 is a constant 0.5), and the share of pairs "
           "where the verifier changed the chosen candidate (`decision.verifier_changed`, all pairs with a report).",
           "",
           "| tool | pairs scored | mean confidence | within 3 px | Brier score | verifier changed | "
           "low-confidence answers kept |", "|---|---|---|---|---|---|---|"]
    tables: list[str] = []
    for t in ours:
        rel = reliability([x for x in rows if x["tool"] == t])
        if rel is None:
            out.append(f"| {_label(t)} | no confidence in the reports | – | – | – | – | – |")
            continue
        out.append(f"| {_label(t)} | {rel['pairs']} | {_f(rel['mean_conf'])} | {_f(rel['within3'], '{:.0%}')} | "
                   f"{_f(rel['brier'], '{:.3f}')} | "
                   f"{_f(rel['verifier_changed'], '{:.0%}')} ({rel['verifier_n']}) | {rel['low_confidence_kept']} |")
        tables += [f"**{_label(t)}**" + (f" ({rel['refused_with_confidence']} refused pairs carried a confidence, "
                                          "not scored)" if rel["refused_with_confidence"] else ""), "",
                   "| confidence | pairs | mean confidence | within 3 px |", "|---|---|---|---|"]
        for b in rel["table"]:
            lo, hi = b["bin"]
            tables.append(f"| {lo:.1f}-{hi:.1f} | {b['pairs']} | {_f(b['mean_conf'])} | "
                          f"{_f(b['within3'], '{:.0%}')} |")
        tables.append("")
    return out + [""] + tables


def _by_truth(rows: list[dict], tools: list[str]) -> list[str]:
    """Per tool, the pairs whose ground truth is sub-pixel apart from the rest (``cases.GT_CLASSES``): where the
    truth itself is off by 1-6 px, an RMSE near or under that says little, so the sub-pixel rows are the ones
    that measure precision."""
    classes = [c for c in (SUBPIXEL, APPROXIMATE) if any(x.get("gt_class", APPROXIMATE) == c for x in rows)]
    if len(classes) < 2:
        return []
    out = ["## By ground-truth accuracy", "",
           "Each case's ground truth is classed from what its source documents, before any tool ran (`bench/cases.py`: "
           "`GT_CLASSES`): " + "; ".join(f"**{c}**: {GT_CLASSES[c]}" for c in classes) + ". Errors under about 1 px "
           "are only measurable on the first.", "",
           "| tool | ground truth | pairs | ≤1 px | ≤3 px | median RMSE | failed |", "|---|---|---|---|---|---|---|"]
    for t in tools:
        if t == "none":
            continue
        for c in classes:
            cr = [x for x in rows if x["tool"] == t and x.get("gt_class", APPROXIMATE) == c]
            if not cr:
                continue
            s = summarise(cr)
            out.append(f"| {_label(t)} | {c} | {s['n']} | {s['s1']:.0%} | {s['s3']:.0%} | "
                       f"{_f(s['median'])} | {s['failed']} |")
    return out + [""]


def _heldout_intro(info: dict, cases: list[dict]) -> list[str]:
    """The held-out set's header: what it is, its sources, that it is disjoint from the dev set."""
    srcs = sorted({c["origin"] for c in cases})
    return [
        "**This is the HELD-OUT set** (`bench/heldout.py`), not the 50 dev cases of `docs/benchmarks.md` that we "
        "tune on. It is disjoint from the dev set: no image file that a dev case reads is read here "
        "(`tests/bench/test_heldout.py` checks it), and its misregistrations are drawn with their own seed "
        f"({info['seed']}) from the same ranges. A few held-out pairs show a location that a dev case also shows "
        "through another product or modality; their ground-truth note says so. No optical-LiDAR pair with ground "
        "truth is left over after the dev set, so that family is absent.",
        "",
        f"Sources ({len(cases)} cases): " + ", ".join(
            f"`{o}` ({sum(1 for c in cases if c['origin'] == o)})" for o in srcs) + ".",
        "",
    ]


def _strong_intro(info: dict, cases: list[dict]) -> list[str]:
    heldout = info.get("set") == "heldout-strong"
    srcs = sorted({c["origin"] for c in cases})
    return [
        "**This is the STRONG misregistration set** (`bench/strong.py`): the sources of the "
        + ("held-out set (`bench/heldout.py`, `docs/benchmarks_heldout.md`)" if heldout else
           "50 dev cases (`docs/benchmarks.md`)")
        + f", misregistered further with their own seed ({info['seed']}): shift up to 15 % of the smaller side and "
        "at most 80 px, rotation up to ±10°, scale up to ±10 %, and a smooth local distortion (a few plane waves "
        "of 0.5-1.5 cycles across the image) whose largest displacement is drawn up to 3 px. An affine model "
        "cannot follow the distortion: a perfect affine answer is off by its residual (about 0-2 px RMSE).",
        "",
        f"Sources ({len(cases)} cases): " + ", ".join(
            f"`{o}` ({sum(1 for c in cases if c['origin'] == o)})" for o in srcs) + ".",
        "",
    ]


def _ranges(info: dict) -> str:
    d = info.get("draws")
    if not d:
        return ("shift up to 40 px (at most 15 % of the smaller side on small patches), rotation up to 4°, scale "
                "up to 5 %")
    return (f"shift up to {d['max_shift']:.0f} px (at most {d['shift_cap_fraction']:.0%} of the smaller side), "
            f"rotation up to {d['max_rot']:.0f}°, scale up to {d['max_scale']:.0%}"
            + (f", plus a smooth local distortion up to {d['max_distortion']:.0f} px (the truth raster holds it "
               "exactly)" if d.get("max_distortion") else ""))


def write_markdown(rows: list[dict], info: dict, path: Path, png: Path | None = None) -> None:
    tools = [t for t in info["tools"] if any(x["tool"] == t for x in rows)]
    fams = [f for f in FAMILIES if any(x["family"] == f for x in rows)]
    m = info["machine"]
    cases = sorted({x["case"]: x for x in rows}.values(), key=lambda x: (FAMILIES.index(x["family"]), x["case"]))
    floor = summarise([x for x in rows if x["tool"] == tools[0]])["floor"] if tools else float("nan")
    set_name = info.get("set", "dev")
    heldout = set_name == "heldout"
    strong = set_name in ("strong", "heldout-strong")
    target = TARGETS.get(set_name, "make bench") + ("-quick" if info["quick"] and set_name == "dev" else "")
    if set_name != "dev" and info["quick"]:
        target += " (quick subset)"
    plot_rel = os.path.relpath(png, path.parent) if png else "img/bench_cdf.png"
    L = [
        "# Benchmark" + {"heldout": " (held-out set)", "strong": " (strong misregistration)",
                         "heldout-strong": " (held-out set, strong misregistration)"}.get(set_name, "") +
        ": HSSCL Co-register and the tools users would pick instead",
        "",
        *(_heldout_intro(info, cases) if heldout else []),
        *(_strong_intro(info, cases) if strong else []),
        f"Generated by `{target}` "
        f"(`{info['command'].strip()}`) on {m['date']}, engine at commit {info.get('engine', '?')}.",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']} RAM, Python {m['python']}, {m['os']}. "
        f"{info['n_cases']} cases, seed {info['seed']}; the whole run took {info['total_seconds'] / 60:.1f} min "
        f"with {info.get('jobs', 1)} pair(s) at once and {info.get('threads', 1)} thread(s) per tool (the same for every "
        f"tool). Load average before / after: {_f(info.get('loadavg_before', [float('nan')])[0], '{:.1f}')} / "
        f"{_f(info.get('loadavg_after', [float('nan')])[0], '{:.1f}')} (a value above {info.get('jobs', 1)} means other work "
        "shared the machine and inflated the times).",
        "",
        "## Protocol",
        "- **Cases.** Real aligned multimodal pairs from `shared/data` (georeferenced Sentinel-1/2 pairs, registered "
        "patch pairs, and pairs with a published homography / affine / tie-point ground truth, re-aligned by it), "
        f"each misregistered by a seeded random similarity about the image centre: {_ranges(info)}. Georeferenced "
        "targets keep the "
        "reference's geotransform, so their georeferencing is wrong by exactly that transform.",
        "- **Error, measured independently of the tools.** A truth raster on the target grid holds the true reference "
        "coordinates of every target pixel. Each tool's correction is applied to it (our engine: `hsscl apply`, its own "
        "warp; peers: their affine, or an affine fitted by the harness to their tie points, one shared warp for all), "
        "and the error at each reference pixel of the overlap is |value − own position|. RMSE per pair in reference "
        "pixels; a result covering under half the overlap, a crash or a timeout is a failure (RMSE = ∞).",
        "- **Success** at k px = RMSE ≤ k. *Refused* = the tool gave no answer (said no, crashed, timed out); "
        "*3-5 px off* and *> 5 px off, given as success* = answers the tool returned as a success that are that far "
        "off (> 5 px includes a result covering under half the overlap). Per row, ≤3 px + refused + 3-5 px + > 5 px "
        "= pairs. *Median RMSE* counts refusals and failures as ∞; *mean RMSE* is over completed pairs. "
        "*Correct matches* = kept tie points within 3 px of the truth (median per pair); *precision* = their share "
        "(mean per pair), for tools that expose matches.",
        "- **Time** = wall time of the tool's subprocess per pair, including interpreter start and model loading "
        "(torch imports take 1-2 s); *peak MB* = largest resident set of that subprocess (and its children) over the "
        "family. The **warp-only floor** is `gdalwarp` resampling the target onto the reference grid (bilinear) "
        f"through the true transform: median {_f(floor, '{:.2f}')} s per pair.",
        "- Ground-truth accuracy bounds what can be measured: landmark-fitted homographies (MMIM) carry 1-5 px "
        "residuals, registered patch sets (OSMNet, 3MOS) ±1-6 px, S1/S2 grids ±2-3 px (see `shared/data/SOURCES.md`). "
        "Success at 1 px is only meaningful on the pairs with tight ground truth (section *By ground-truth accuracy*).",
        "",
        "## Headline (all pairs)",
        "",
        *_headline(rows, tools),
        "",
        *_speed_line(rows),
        "## Per tool and family",
        "",
        *_table(rows, tools, fams),
        "",
        f"![Error CDFs per family]({plot_rel})",
        "",
        *_by_truth(rows, tools),
        *_calibration(rows, tools),
        "## Tools",
        "",
        "| tool | status here | settings |",
        "|---|---|---|",
    ]
    for t in info["tools"]:
        tool = TOOLS.get(t)
        status = "ran" if t not in info["skipped"] else f"**could not run:** {info['skipped'][t]}"
        L.append(f"| {tool.label if tool else t} | {status} | {tool.note if tool else ''} |")
    L += [
        "| RoMa, XoFTR, MINIMA, MatchAnything, LoFTR | not runnable here | weights download from a model hub at "
        "run time; no network here |",
        "| SuperPoint/SIFT + LightGlue, ALIKED | not runnable here | SuperPoint/SIFT-LightGlue weights download at run "
        "time; ALIKED needs torchvision (not installed) |",
        "| SNAP coregistration, ENVI, ERDAS | not runnable here | own installer / commercial |",
        "| RIFT, HOPC, CFOG (MATLAB originals) | not runnable here | MATLAB; their papers' figures use other protocols "
        "and are not comparable to this table |",
        "",
        "## Cases",
        "",
        "| case | family | source | size | initial RMSE (px) | ground truth | its accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        L.append(f"| {c['case']} | {c['family']} | {c['origin']} | {c['size']} | {c['initial_rmse']:.1f} | "
                 f"{next((g for g in [c.get('gt_note')] if g), '')} | {c.get('gt_class', APPROXIMATE)} |")
    fails = [x for x in rows if x.get("failed") and x["tool"] != "none"]
    ours = [x for x in fails if x.get("group") == "ours"]
    if ours:
        L += ["", "## Our failures", "", "| tool | case | reason |", "|---|---|---|"]
        for x in ours:
            L.append(f"| {x['tool']} | {x['case']} | {_clean(x.get('reason', ''), 220)} |")
    wrong = [x for x in rows if x.get("group") == "ours" and outcome(x) in ("off3_5", "off5")]
    if wrong:
        L += ["", "## Our wrong answers (more than 3 px off, given as success)", "",
              "| tool | case | RMSE (px) | confidence | low confidence kept |", "|---|---|---|---|---|"]
        for x in wrong:
            L.append(f"| {x['tool']} | {x['case']} | {_f(x.get('rmse'))} | {_f(x.get('confidence'))} | "
                     f"{'yes' if x.get('low_confidence') else 'no' if x.get('low_confidence') is False else '–'} |")
    peers = [x for x in fails if x.get("group") != "ours"]
    if peers:
        from collections import Counter

        L += ["", "## Peers' failures (by reason)", "", "| tool | failures | reason |", "|---|---|---|"]
        cnt = Counter((x["tool"], _clean(x.get("reason", ""), 110)) for x in peers)
        for (t, why), k in sorted(cnt.items(), key=lambda kv: (kv[0][0], -kv[1])):
            L.append(f"| {t} | {k} | {why} |")
    tools_var = {"heldout": "HELDOUT_TOOLS", "strong": "STRONG_TOOLS", "heldout-strong": "STRONG_TOOLS"}
    L += ["", f"Reproduce: `{TARGETS[set_name]}` (this set; `{tools_var[set_name]}=...` picks the tools). Raw "
          f"per-run numbers: [{Path(info['csv']).name}]({Path(info['csv']).name}). Code: `bench/`.", ""] \
        if set_name in tools_var and info.get("csv") \
        else ["", "Reproduce: `make bench` (full, < 30 min on 2 cores) or `make bench-quick` (< 5 min). Raw per-run "
          "numbers: [benchmarks.csv](benchmarks.csv). Code: `bench/`.", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(L))


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for x in rows:
            w.writerow({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in x.items()})


def plot_cdf(rows: list[dict], info: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = [f for f in FAMILIES if any(x["family"] == f for x in rows)]
    tools = [t for t in info["tools"] if any(x["tool"] == t for x in rows)]
    n = len(fams) + 1
    cols = 4 if n > 4 else n
    rws = math.ceil(n / cols)
    fig, axs = plt.subplots(rws, cols, figsize=(4.2 * cols, 3.4 * rws), squeeze=False)
    xs = np.logspace(-1, 2, 300)
    for k, fam in enumerate(fams + ["all"]):
        ax = axs[k // cols][k % cols]
        for t in tools:
            r = np.array([x["rmse"] if not x.get("failed") else np.inf for x in rows
                          if x["tool"] == t and (fam == "all" or x["family"] == fam)], float)
            if len(r) == 0:
                continue
            ax.plot(xs, [(r <= v).mean() for v in xs], label=_label(t),
                    lw=2.2 if t.startswith("hsscl") else 1.3, ls="--" if t == "none" else "-")
        for v in (1, 3, 5):
            ax.axvline(v, color="0.85", lw=0.8, zorder=0)
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        ax.set_title(f"{fam} ({sum(1 for x in rows if x['tool'] == tools[0] and (fam == 'all' or x['family'] == fam))} pairs)",
                     fontsize=9)
        ax.set_xlabel("RMSE (px, reference grid)", fontsize=8)
        ax.set_ylabel("share of pairs ≤ RMSE", fontsize=8)
        ax.tick_params(labelsize=7)
    for k in range(len(fams) + 1, rws * cols):
        axs[k // cols][k % cols].axis("off")
    h, lab = axs[0][0].get_legend_handles_labels()
    fig.legend(h, lab, loc="lower center", ncol=min(4, len(lab)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_all(rows: list[dict], info: dict, md: Path, csv_path: Path | None, png: Path | None) -> None:
    if csv_path:
        info = {**info, "csv": str(csv_path)}
    write_markdown(rows, info, md, png)
    if csv_path:
        write_csv(rows, csv_path)
    if png:
        plot_cdf(rows, info, png)


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description="re-write the report from .bench/results*.json")
    ap.add_argument("results", nargs="?", default=".bench/results.json")
    ap.add_argument("--out", default="docs/benchmarks.md")
    a = ap.parse_args()
    d = json.loads(Path(a.results).read_text())
    write_all(d["rows"], d["info"], Path(a.out), Path("docs/benchmarks.csv"), Path("docs/img/bench_cdf.png"))
