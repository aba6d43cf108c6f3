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
              "precision3", "seconds", "peak_mb", "warp_floor_s", "timeout", "warp", "reason", "gt_class"]


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


def summarise(rows: list[dict]) -> dict:
    n = len(rows)
    r = np.array([x.get("rmse", np.inf) if not x.get("failed") else np.inf for x in rows], float)
    ok = np.isfinite(r)
    m = [x for x in rows if x.get("matches") is not None]
    secs = np.array([x["seconds"] for x in rows], float)
    floors = np.array([x.get("warp_floor_s", np.nan) for x in rows], float)
    return {
        "n": n, "failed": int((~ok).sum()),
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
    head = ("| tool | family | pairs | ≤1 px | ≤3 px | ≤5 px | median RMSE | mean RMSE (completed) | failed | "
            "correct matches @3 px (median) | precision @3 px | s / pair (median) | peak MB | threads |")
    out = [head, "|" + "|".join(["---"] * 14) + "|"]
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
                f"{s['s5']:.0%} | {_f(s['median'])} | {_f(s['mean'])} | {s['failed']} | "
                f"{_f(s['correct3'], '{:.0f}')} | {_f(s['precision3'], '{:.0%}')} | {_f(s['sec'], '{:.2f}')} | "
                f"{_f(s['peak'] or None, '{:.0f}')} | {max(x.get('threads', 0) for x in fr) or '–'} |")
    return out


def _headline(rows: list[dict], tools: list[str]) -> list[str]:
    head = "| tool | pairs | ≤1 px | ≤3 px | ≤5 px | median RMSE | failed | s / pair | total / warp floor |"
    out = [head, "|" + "|".join(["---"] * 9) + "|"]
    for t in tools:
        tr = [x for x in rows if x["tool"] == t]
        if not tr:
            continue
        s = summarise(tr)
        ratio = s["sec"] / s["floor"] if s["floor"] and s["sec"] else float("nan")
        out.append(f"| {_label(t)} | {s['n']} | {s['s1']:.0%} | {s['s3']:.0%} | "
                   f"{s['s5']:.0%} | {_f(s['median'])} | {s['failed']} | {_f(s['sec'])} | "
                   f"{_f(ratio, '{:.0f}×') if t != 'none' else '–'} |")
    return out


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


def write_markdown(rows: list[dict], info: dict, path: Path, png: Path | None = None) -> None:
    tools = [t for t in info["tools"] if any(x["tool"] == t for x in rows)]
    fams = [f for f in FAMILIES if any(x["family"] == f for x in rows)]
    m = info["machine"]
    cases = sorted({x["case"]: x for x in rows}.values(), key=lambda x: (FAMILIES.index(x["family"]), x["case"]))
    floor = summarise([x for x in rows if x["tool"] == tools[0]])["floor"] if tools else float("nan")
    heldout = info.get("set") == "heldout"
    target = ("make bench-heldout" if heldout else "make bench") + ("-quick" if info["quick"] and not heldout else "")
    if heldout and info["quick"]:
        target += " (quick subset)"
    plot_rel = os.path.relpath(png, path.parent) if png else "img/bench_cdf.png"
    L = [
        "# Benchmark" + (" (held-out set)" if heldout else "") +
        ": HSSCL Co-register and the tools users would pick instead",
        "",
        *(_heldout_intro(info, cases) if heldout else []),
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
        "each misregistered by a seeded random similarity about the image centre: shift up to 40 px (at most 15 % of "
        "the smaller side on small patches), rotation up to 4°, scale up to 5 %. Georeferenced targets keep the "
        "reference's geotransform, so their georeferencing is wrong by exactly that transform.",
        "- **Error, measured independently of the tools.** A truth raster on the target grid holds the true reference "
        "coordinates of every target pixel. Each tool's correction is applied to it (our engine: `hsscl apply`, its own "
        "warp; peers: their affine, or an affine fitted by the harness to their tie points, one shared warp for all), "
        "and the error at each reference pixel of the overlap is |value − own position|. RMSE per pair in reference "
        "pixels; a result covering under half the overlap, a crash or a timeout is a failure (RMSE = ∞).",
        "- **Success** at k px = RMSE ≤ k. *Median RMSE* counts failures as ∞; *mean RMSE* is over completed pairs. "
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
        "## Per tool and family",
        "",
        *_table(rows, tools, fams),
        "",
        f"![Error CDFs per family]({plot_rel})",
        "",
        *_by_truth(rows, tools),
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
    peers = [x for x in fails if x.get("group") != "ours"]
    if peers:
        from collections import Counter

        L += ["", "## Peers' failures (by reason)", "", "| tool | failures | reason |", "|---|---|---|"]
        cnt = Counter((x["tool"], _clean(x.get("reason", ""), 110)) for x in peers)
        for (t, why), k in sorted(cnt.items(), key=lambda kv: (kv[0][0], -kv[1])):
            L.append(f"| {t} | {k} | {why} |")
    L += ["", "Reproduce: `make bench-heldout` (this set; `HELDOUT_TOOLS=...` picks the tools). Raw per-run numbers: "
          f"[{Path(info['csv']).name}]({Path(info['csv']).name}). Code: `bench/`.", ""] if heldout and info.get("csv") \
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
