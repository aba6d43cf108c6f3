"""Command-line interface: ``hsscl coregister | apply | match | batch | train``.

User errors end with a non-zero exit status and one line on stderr saying what is wrong and what to
try (no traceback); ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import sys
import time

from .config import DESCRIPTORS, DEVICES, GRAPH_MODES, GRIDS, MODALITIES, TRANSFORMS
from .errors import HSSCLError


def _bands(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError("bands must be comma-separated numbers, e.g. 4,3,2") from exc


def _extent(text: str | None):
    if not text:
        return None
    try:
        v = tuple(float(x) for x in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError("extent must be xmin,ymin,xmax,ymax") from exc
    if len(v) != 4 or v[0] >= v[2] or v[1] >= v[3]:
        raise argparse.ArgumentTypeError("extent must be xmin,ymin,xmax,ymax with xmin<xmax and ymin<ymax")
    return v


def _add_matching_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transform", choices=TRANSFORMS, default="auto",
                   help="geometric model; auto picks the simplest model the tie points support (default)")
    p.add_argument("--device", choices=DEVICES, default="auto", help="compute device (default auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same inputs + seed = same tie points)")
    p.add_argument("--ref-bands", type=_bands, help="reference bands to use, e.g. 1 or 4,3,2 (default: automatic)")
    p.add_argument("--tgt-bands", type=_bands, help="target bands to use (default: automatic)")
    p.add_argument("--ref-modality", choices=MODALITIES, default="auto", help="reference modality (default auto)")
    p.add_argument("--tgt-modality", choices=MODALITIES, default="auto", help="target modality (default auto)")
    p.add_argument("--no-denoise", action="store_true", help="skip the block-wise adaptive denoising")
    p.add_argument("--max-shift", type=float, help="coarse search radius in reference pixels "
                   "(default: 10%% of the image size capped at 100 px, at least 50 px)")
    p.add_argument("--max-rotation", type=float, default=10.0, metavar="DEG",
                   help="largest rotation searched, in degrees, up to 180 (default 10)")
    p.add_argument("--max-scale", type=float, default=0.10, metavar="FRACTION",
                   help="largest scale change searched, as a fraction in (0, 1) (default 0.10 = ±10%%)")
    p.add_argument("--any-rotation", action="store_true",
                   help="also search any rotation (images turned by 90°, 180° or any angle); always on for images "
                        "without georeferencing when the first search is not confident")
    p.add_argument("--no-wider-search", action="store_true",
                   help="do not try a wider second search when nothing reaches the confidence threshold")
    p.add_argument("--min-confidence", type=float, metavar="P",
                   help="accept an alignment only when its confidence (probability that it is within 3 px) is at "
                        "least P, in [0, 1] (default: the shipped verifier's threshold)")
    p.add_argument("--keep-best-guess", action="store_true",
                   help="below the confidence threshold, write the best candidate anyway, marked low-confidence "
                        "in report.json and the tie-point layer")
    p.add_argument("--extent", type=_extent, help="match only inside xmin,ymin,xmax,ymax (reference CRS)")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--weights", help="network weights (safetensors) to use instead of the shipped ones")
    p.add_argument("--adapt", action="store_true", help="on-the-fly adaptation of the network to the pair")
    p.add_argument("--adapt-budget", type=float, default=30.0,
                   help="time budget of the adaptation in seconds (default 30)")
    p.add_argument("--descriptor", choices=DESCRIPTORS, default="auto",
                   help="dense descriptor: auto (the current default), cfog (weight-free), learned-cfog (CFOG on the "
                        "learned pre-filter), hsscl (network), hybrid (CFOG beside the network's fine level) or "
                        "hsscl-fine / -mid / -coarse (one level)")
    p.add_argument("--graph", choices=GRAPH_MODES, default="auto",
                   help="graph refinement of the matches (GNN): on, off, auto (default; off for now: no clear gain measured)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hsscl", description="HSSCL Co-register: multimodal raster co-registration "
                                 "(SAR, optical, multispectral, maps, LiDAR).")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("coregister", help="co-register TARGET onto REFERENCE")
    c.add_argument("reference")
    c.add_argument("target")
    c.add_argument("-o", "--outdir", required=True, help="output folder")
    c.add_argument("--grid", choices=GRIDS, default="reference",
                   help="reference: output on the reference grid (default); target: keep the target's grid")
    c.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress, only the summary")
    _add_matching_options(c)
    a = sub.add_parser("apply", help="apply the correction of a coregister run to another raster on the target grid")
    a.add_argument("source", help="output folder of 'hsscl coregister' (or its correction.json)")
    a.add_argument("raster", help="raster on the target's grid (other bands, a mask, a derived product)")
    a.add_argument("-o", "--out", required=True, help="output GeoTIFF")
    a.add_argument("--overwrite", action="store_true")
    m = sub.add_parser("match", help="tie points between two images (pixel coordinates), as CSV")
    m.add_argument("image_a")
    m.add_argument("image_b")
    m.add_argument("-o", "--out", required=True, help="CSV: a_x,a_y,b_x,b_y,score,inlier")
    m.add_argument("--overwrite", action="store_true")
    _add_matching_options(m)
    b = sub.add_parser("batch", help="co-register every pair of a CSV manifest (reference,target[,id,options])",
                       description="Co-register every pair of MANIFEST into OUTDIR/<id>/ and write OUTDIR/summary.csv. "
                       "The options below are the defaults of every row; manifest columns override them. "
                       "Exit status: 0 all pairs ok or skipped, 1 some pair failed, 2 unusable manifest, "
                       "130 interrupted. See docs/batch.md.")
    b.add_argument("manifest", help="CSV with columns reference,target and optionally id and option columns")
    b.add_argument("-o", "--outdir", required=True, help="output folder (one sub-folder per pair + summary.csv)")
    b.add_argument("--grid", choices=GRIDS, default="reference", help="output grid of every pair (default reference)")
    b.add_argument("--overwrite", action="store_true", help="redo pairs that are already done")
    b.add_argument("-q", "--quiet", action="store_true", help="no line per pair, only the summary")
    b.add_argument("--scheduler", default="local",
                   help="local: a Dask cluster on this machine (default); sync: one pair after another in this "
                   "process, no Dask; or the address of a running Dask scheduler, e.g. tcp://host:8786")
    b.add_argument("--workers", type=int, help="worker processes of the local cluster (default: min(CPUs, pairs))")
    b.add_argument("--wait-workers", type=float, default=120.0, metavar="S",
                   help="with --scheduler tcp://...: give up after S seconds without any worker (default 120)")
    _add_matching_options(b)
    from .train.cli import add_train_parser

    add_train_parser(sub)
    return ap


def _config(ns, **extra):
    from .config import CoregConfig

    return CoregConfig(transform=ns.transform, device=ns.device, seed=ns.seed, denoise=not ns.no_denoise,
                       ref_bands=ns.ref_bands, tgt_bands=ns.tgt_bands, ref_modality=ns.ref_modality,
                       tgt_modality=ns.tgt_modality, max_shift_px=ns.max_shift, extent=ns.extent,
                       threads=ns.threads, weights=ns.weights, adapt=ns.adapt,
                       adapt_budget_s=ns.adapt_budget, descriptor=ns.descriptor, graph=ns.graph,
                       max_rotation_deg=ns.max_rotation, max_scale_change=ns.max_scale, any_rotation=ns.any_rotation,
                       wider_search=not ns.no_wider_search, min_confidence=ns.min_confidence,
                       keep_best_guess=ns.keep_best_guess, **extra)


class _Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.last = ""

    def __call__(self, fraction: float, message: str) -> None:
        if self.quiet or not message or message == self.last:
            return
        self.last = message
        print(f"  [{fraction * 100:5.1f}%] {message}", file=sys.stderr, flush=True)


def _run(ns) -> int:
    import os

    if ns.command in ("coregister", "match"):  # bad options and missing inputs are said before torch loads
        cfg = _config(ns, grid=ns.grid, overwrite=ns.overwrite) if ns.command == "coregister" else _config(ns)
        for path in ((ns.reference, ns.target) if ns.command == "coregister" else (ns.image_a, ns.image_b)):
            if not os.path.exists(path) and "://" not in path and not path.startswith("/vsi"):
                from .errors import InputError

                raise InputError(f"Raster not found: '{path}'.", "Check the path and the file name.")
    from . import pipeline
    from .progress import Monitor

    if ns.command == "coregister":
        t0 = time.perf_counter()
        mon = Monitor(_Progress(ns.quiet))
        res = pipeline.coregister(ns.reference, ns.target, ns.outdir, cfg, mon)
        r = res.report
        check = r["rmse_px"]["check"]
        print(f"Co-registered {r['target']['path']} ({r['target']['modality']}) onto "
              f"{r['reference']['path']} ({r['reference']['modality']}), {r['space']} space")
        print(f"  model: {r['model']['kind']} ({r['model']['reason']})")
        second = r.get("second_opinion") or {}
        print(f"  descriptor: {r['descriptor']}" + (f" (second opinion: {second['first_descriptor']} found no "
                                                    "reliable alignment)" if second.get("used") else ""))
        dec = r.get("decision") or {}
        print(f"  confidence: {r.get('confidence', 0):.1%} that it is within 3 px (threshold {dec.get('threshold', 0):.0%}; "
              f"{dec.get('chosen', '')})" + ("  LOW CONFIDENCE: best guess kept, review the tie points"
                                            if dec.get("low_confidence") else ""))
        print(f"  tie points: {res.n_inliers} inliers of {res.n_tiepoints} candidates, "
              f"{r['counts']['check_points']} held out as check points")
        print(f"  residual RMSE: fit {r['rmse_px']['fit']:.3f} px, check "
              f"{'n/a' if check is None else f'{check:.3f} px'} (reference pixels)")
        print(f"  time: {time.perf_counter() - t0:.1f} s on {r['device']}")
        if r.get("device_note"):
            print(f"  note: {r['device_note']}")
        for k, v in res.outputs.items():
            print(f"  {k}: {v}")
        return 0
    if ns.command == "apply":
        out = pipeline.apply(ns.source, ns.raster, ns.out, overwrite=ns.overwrite)
        print(f"Wrote {out}")
        return 0
    if ns.command == "batch":
        from .batch import print_batch_result, run_batch

        batch_res = run_batch(ns.manifest, ns.outdir, _config(ns, grid=ns.grid), scheduler=ns.scheduler,
                              workers=ns.workers, overwrite=ns.overwrite,
                              report=None if ns.quiet else (lambda line: print(line, flush=True)),
                              wait_workers=ns.wait_workers, notice=lambda line: print(line, flush=True))
        return print_batch_result(batch_res)
    if ns.command == "train":
        from .train.cli import run_train

        return run_train(ns)
    if ns.command == "match":
        from .io.output import atomic_path, check_output_file

        final = check_output_file(ns.out, ns.overwrite)
        est = pipeline.match(ns.image_a, ns.image_b, cfg)
        with atomic_path(final) as tmp:
            est.tiepoints.write_csv(tmp)
        print(f"Wrote {len(est.tiepoints)} tie points ({est.tiepoints.n_inliers} inliers) to {final}")
        return 0
    raise AssertionError(ns.command)  # pragma: no cover


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    ns = ap.parse_args(argv)
    from .batch import TerminatedBySignal, terminate_on_sigterm

    try:
        with terminate_on_sigterm():  # SIGTERM ends a run like Ctrl-C: temporaries removed, summary written
            return _run(ns)
    except HSSCLError as exc:
        if ns.debug:
            raise
        print(f"hsscl: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print("hsscl: interrupted; nothing was left under the output names.", file=sys.stderr)
        return 143 if isinstance(exc, TerminatedBySignal) else 130
    except OSError as exc:  # e.g. a folder that vanished: one line, not a traceback
        if ns.debug:
            raise
        print(f"hsscl: error: {exc} (run with --debug to see where)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
