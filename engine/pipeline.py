"""The one pipeline: input -> preprocessing -> descriptors -> coarse-to-fine matching -> robust fit
-> apply. Used by the CLI, the Processing algorithms (and so the dock, batch, models, qgis_process).

Public functions:
    estimate(reference, target, config, monitor) -> Estimate          (nothing written)
    coregister(reference, target, outdir, config, monitor) -> CoregResult
    apply(outdir_or_correction_json, raster, out, overwrite, monitor) -> str
    apply_tiepoints(tiepoints, reference, raster, out, transform, grid, overwrite, monitor) -> str
    match(image_a, image_b, config, monitor) -> Estimate
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .adapt import match_adapted
from .config import CoregConfig
from .correction import Correction
from .descriptors import get_descriptor
from .descriptors.base import second_opinion
from .device import resolve_device, set_threads
from .errors import InputError, NotEnoughMatchesError, WeightsError
from .fitting import fit_correction
from .geometry.transforms import Affine
from .io.outputset import OutputSet, raster_bytes
from .io.raster import (
    RasterGrid,
    Window,
    check_georeferencing,
    open_raster_info,
    overlap_window,
    read_bands,
    same_crs,
    transform_points,
)
from .io.vector import read_tiepoints_gpkg, write_tiepoints_gpkg
from .matching.matcher import MatchSettings
from .preprocess import prepare
from .progress import Monitor
from .scene import plan_scene
from .tiepoints import TiePoints
from .warp import apply_correction

OUTPUT_NAMES = {"raster": "coregistered.tif", "tiepoints": "tiepoints.gpkg", "report": "report.json",
                "correction": "correction.json"}


@dataclass(frozen=True)
class Estimate:
    tiepoints: TiePoints
    correction: Correction
    report: dict[str, Any]


@dataclass(frozen=True)
class CoregResult:
    outdir: str
    outputs: dict[str, str]
    estimate: Estimate
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def rmse_px(self) -> float:
        r = self.report["rmse_px"]
        return r["check"] if r["check"] is not None else r["fit"]

    @property
    def n_tiepoints(self) -> int:
        return len(self.estimate.tiepoints)

    @property
    def n_inliers(self) -> int:
        return self.estimate.tiepoints.n_inliers


def _versions() -> dict[str, str]:
    from osgeo import gdal

    from .. import __version__

    return {"hsscl": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "gdal": gdal.__version__, "python": platform.python_version()}


def default_max_shift(width: int, height: int) -> float:
    """Coarse search radius: 15 % of the image size (no cap: a wrong georeferencing grows with the scene),
    but at least 50 px."""
    return float(max(50.0, 0.15 * max(width, height)))


def _extent_window(grid: RasterGrid, extent: tuple[float, float, float, float]) -> Window:
    xmin, ymin, xmax, ymax = extent
    if grid.georeferenced:
        w = grid.window_for_bounds((xmin, ymin, xmax, ymax))
    else:  # pixel space: the extent is in pixels (x, y) of the reference
        w = Window(int(np.floor(xmin)), int(np.floor(ymin)), int(np.ceil(xmax - xmin)), int(np.ceil(ymax - ymin)))
    x0, y0 = max(w.col_off, 0), max(w.row_off, 0)
    x1, y1 = min(w.col_off + w.width, grid.width), min(w.row_off + w.height, grid.height)
    if x1 <= x0 or y1 <= y0:
        from .errors import NoOverlapError

        raise NoOverlapError("The extent to match does not intersect the reference raster.",
                             "Draw or give an extent inside the reference raster.")
    return Window(x0, y0, x1 - x0, y1 - y0)


def _intersect(a: Window, b: Window) -> Window:
    x0, y0 = max(a.col_off, b.col_off), max(a.row_off, b.row_off)
    x1 = min(a.col_off + a.width, b.col_off + b.width)
    y1 = min(a.row_off + a.height, b.row_off + b.height)
    if x1 <= x0 or y1 <= y0:
        from .errors import NoOverlapError

        raise NoOverlapError("The extent to match does not cover ground seen by the target.",
                             "Choose an extent where both rasters have data.")
    return Window(x0, y0, x1 - x0, y1 - y0)


def _moving_to_target(match_grid: RasterGrid | None, tgt: RasterGrid):
    """Map moving-image pixels (target resampled onto the match grid) to target pixels."""
    if match_grid is None:
        return lambda xy: np.asarray(xy, float)

    def f(xy: np.ndarray) -> np.ndarray:
        m = match_grid.pixel_to_map(np.asarray(xy, float))
        src, dst = match_grid.crs_wkt, tgt.crs_wkt
        if not same_crs(src, dst):
            # same_crs is True when both are None; check_georeferencing refused exactly one CRS
            assert src is not None and dst is not None
            m = transform_points(m, src, dst)
        return tgt.map_to_pixel(m)

    return f


def _modality_report(p) -> dict[str, Any]:
    return {"modality": p.modality.modality, "sar_scale": p.modality.sar_scale, "reason": p.modality.reason,
            "denoise": p.denoise_stats}


def estimate(reference: str | os.PathLike, target: str | os.PathLike, config: CoregConfig | None = None,
             monitor: Monitor | None = None) -> Estimate:
    """Estimate the correction of ``target`` onto ``reference`` (tie points + fitted model)."""
    config = config or CoregConfig()
    mon = monitor or Monitor()
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    set_threads(config.threads)
    device, device_note = resolve_device(config.device)
    if device_note:
        mon.log(device_note)
    torch.manual_seed(config.seed)

    t = time.perf_counter()
    ref_info = open_raster_info(reference)
    tgt_info = open_raster_info(target)
    ref_grid, tgt_grid = ref_info.grid, tgt_info.grid
    check_georeferencing(ref_grid, tgt_grid)
    max_shift = config.max_shift_px or default_max_shift(ref_grid.width, ref_grid.height)
    if ref_grid.georeferenced:
        win = overlap_window(ref_grid, tgt_grid, margin_px=0.0)
    else:
        win = Window(0, 0, ref_grid.width, ref_grid.height)
    if config.extent is not None:
        win = _intersect(win, _extent_window(ref_grid, config.extent))
    match_grid = ref_grid.subgrid(win)
    plan = plan_scene(ref_info, tgt_info, win, match_grid, config)  # large: decimated reads, then tiles
    ref_data, ref_valid = read_bands(ref_info.path, window=win) if plan is None else plan.read_reference()
    mon.check()
    if ref_grid.georeferenced:
        mov_data, mov_valid = read_bands(tgt_info.path, out_grid=match_grid) if plan is None else plan.read_target()
        to_target = _moving_to_target(match_grid, tgt_grid)
    else:
        mov_data, mov_valid = read_bands(tgt_info.path) if plan is None else plan.read_target()
        to_target = _moving_to_target(None, tgt_grid)
    timings["read"] = time.perf_counter() - t
    mon.report(0.05, "images read")

    with mon.stage(0.05, 0.15, "preprocessing (modality, denoising)"):
        pr = prepare(ref_data, ref_valid, ref_info.dtypes[0], ref_info.descriptions, "reference", ref_info.path,
                     config.ref_modality, config.ref_bands, config.denoise)
        mon.check()
        pt = prepare(mov_data, mov_valid, tgt_info.dtypes[0], tgt_info.descriptions, "target", tgt_info.path,
                     config.tgt_modality, config.tgt_bands, config.denoise)
    timings["preprocess"] = pr.seconds + pt.seconds

    descriptor = get_descriptor(config.descriptor, config.weights, str(device))
    settings = MatchSettings(max_shift_px=max_shift, max_rotation_deg=config.max_rotation_deg,
                             max_scale=config.max_scale_change, seed=config.seed)
    if plan is not None:  # the matcher first runs on the decimated images: global prior
        settings = plan.overview_settings(settings)
    R = torch.from_numpy(pr.image)[None, None].to(device)
    RV = torch.from_numpy(pr.valid)[None, None].to(device)
    M = torch.from_numpy(pt.image)[None, None].to(device)
    MV = torch.from_numpy(pt.valid)[None, None].to(device)
    t = time.perf_counter()
    with mon.stage(0.15, 0.85 if plan is None else 0.3, "matching" if plan is None else "matching (decimated)"):
        res, descriptor, adapt_note, second_note, decision, search_note = _match(
            R, RV, M, MV, descriptor, settings, config, device, mon, ref_grid.georeferenced)
    if plan is not None:  # whole scene: tiles matched under the decimated result, merged (engine/scene.py)
        with mon.stage(0.3, 0.85, "matching tiles"):
            res = plan.match_tiles(res, descriptor, pr.modality.modality, pt.modality.modality, device, mon)
    timings["match"] = time.perf_counter() - t

    t = time.perf_counter()
    fm = res.matches
    # graph refinement (engine/graph): prune / refine candidates, inlier probability as the MAGSAC prior
    from .graph.refine import graph_refine

    if plan is None:
        fm, graph_report = graph_refine(config.graph, fm, res.inlier, R, RV, M, MV, descriptor)
    else:  # R/M hold the decimated scene, not the images these full-resolution matches come from
        graph_report = {"used": False, "reason": "not applied on the tiled path (whole scenes)",
                        "nodes_in": len(fm), "nodes_out": len(fm), "seconds": 0.0}
    ref_xy = fm.ref_xy + [win.col_off, win.row_off]
    tgt_xy = to_target(fm.mov_xy)
    ok = np.isfinite(tgt_xy).all(1)
    ref_xy, tgt_xy, score = ref_xy[ok], tgt_xy[ok], fm.score[ok]
    # size of one reference pixel in target pixels (residuals are reported in reference pixels)
    a = Affine.fit(ref_xy, tgt_xy).A
    px_scale = float(np.sqrt(abs(np.linalg.det(a[:, :2])))) or 1.0
    with mon.stage(0.85, 0.95, "robust fitting"):
        fit = fit_correction(ref_xy, tgt_xy, score, config.transform, px_scale=px_scale, seed=config.seed)
    timings["fit"] = time.perf_counter() - t
    ties = TiePoints(ref_xy, tgt_xy, score, fit.inlier, fit.check, fit.residual_px)
    correction = Correction(ref_grid, tgt_grid, fit.model, config.grid)
    timings["total_estimate"] = time.perf_counter() - t_all
    report = {
        "reference": {"path": ref_info.path, "width": ref_grid.width, "height": ref_grid.height,
                      "georeferenced": ref_grid.georeferenced, **_modality_report(pr)},
        "target": {"path": tgt_info.path, "width": tgt_grid.width, "height": tgt_grid.height,
                   "georeferenced": tgt_grid.georeferenced, **_modality_report(pt)},
        "matched_window": {"col_off": win.col_off, "row_off": win.row_off, "width": win.width, "height": win.height},
        "space": "map (target resampled onto the reference grid for matching)" if ref_grid.georeferenced
        else "pixel (no georeferencing)",
        "descriptor": getattr(descriptor, "name", str(descriptor)),
        "device": str(device), "device_note": device_note, "adaptation": adapt_note or "off",
        "second_opinion": second_note,
        "confidence": round(decision.confidence, 4),
        "decision": decision.to_dict(),
        "verify": res.diagnostics.get("verify"),
        "search": search_note,
        "config": config.to_dict(),
        "model": {"kind": fit.kind, "reason": fit.reason, "params": fit.model.to_dict(), "cv_rmse_px": fit.cv_rmse},
        "counts": {"candidates": len(ties), "inliers": ties.n_inliers, "check_points": int(fit.check.sum()),
                   "fit_points": int((fit.inlier & ~fit.check).sum())},
        "rmse_px": {"fit": round(fit.rmse_fit_px, 4),
                    "check": None if fit.rmse_check_px is None else round(fit.rmse_check_px, 4),
                    "units": "reference pixels"},
        "matching": res.diagnostics,
        "graph": graph_report,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "versions": _versions(),
    }
    return Estimate(ties, correction, report)


def _match(R, RV, M, MV, descriptor, settings: MatchSettings, config: CoregConfig, device, mon: Monitor,
           georeferenced: bool = True):
    """Every alternative for this pair, judged by the verify stage on one scale, and the decision on them.

    1. the configured descriptor (adapted to the pair when ``config.adapt``: engine/adapt.py, which keeps the
       adapted match only when it is more confident);
    2. when that is below the decision threshold and the descriptor has a second opinion
       (:func:`~.descriptors.base.second_opinion`), that descriptor;
    3. when still below it, a wider search (:func:`wider_settings`: larger shift, rotation and scale ranges,
       and any rotation for images without georeferencing or with ``config.any_rotation``).
    The most confident wins (:func:`~.decision.decide`). Returns ``(result, descriptor, adaptation note,
    second-opinion note, decision, search note)``; raises :class:`NotEnoughMatchesError` below the threshold
    unless ``config.keep_best_guess``."""
    from .decision import Alternative, decide, threshold

    thr = threshold(config.min_confidence)
    alts: list[Alternative] = []
    errors: list[NotEnoughMatchesError] = []
    adapt_notes: dict[int, Any] = {}
    second = second_opinion(config.descriptor, config.weights)
    first_name = getattr(descriptor, "name", str(descriptor))
    note: dict[str, Any] = {"descriptor": second, "used": False}
    search_note: dict[str, Any] = {"wider": False}

    def best_conf() -> float:
        return max((a.confidence for a in alts), default=-1.0)

    def attempt(label: str, desc, s: MatchSettings, adapt: bool) -> None:
        try:
            if adapt:
                res, d, an = match_adapted(R, RV, M, MV, desc, s, config, device, mon)
            else:
                from .matching.matcher import match_pair

                res, d, an = match_pair(R, RV, M, MV, desc, s, monitor=mon), desc, None
        except NotEnoughMatchesError as err:
            errors.append(err)
            mon.log(f"{label}: {err.message}")
            return
        if an is not None and an.get("kept") == "adapted":
            label = f"{label}, adapted"
        alts.append(Alternative(label, res, d))
        adapt_notes[len(alts) - 1] = an
        mon.log(f"{label}: confidence {res.confidence:.1%}")

    with mon.stage(0.0, 0.45, f"matching ({first_name})"):
        attempt(first_name, descriptor, settings, True)
    if second is not None and best_conf() < thr:
        mon.log(f"{first_name}: confidence below {thr:.0%}; asking {second} for a second opinion")
        with mon.stage(0.45, 0.7, f"matching ({second}, second opinion)"):
            try:
                d2 = get_descriptor(second, None, str(device))
            except WeightsError as werr:  # e.g. a damaged install: the first answer still stands
                note["error"] = werr.message
                d2 = None
            if d2 is not None:
                attempt(f"{second} (second opinion)", d2, settings, True)
    if best_conf() < thr and config.wider_search:
        wide = wider_settings(settings, R, RV, M, MV, any_rotation=config.any_rotation or not georeferenced)
        lead = max(alts, key=lambda a: a.confidence) if alts else None
        d3 = lead.descriptor if lead is not None else descriptor
        name3 = getattr(d3, "name", str(d3))
        search_note = {"wider": True, "why": f"no alternative reached the threshold {thr:.0%}",
                       "max_shift_px": round(wide.max_shift_px, 1), "max_rotation_deg": wide.max_rotation_deg,
                       "max_scale": wide.max_scale, "rotation_centres": [round(c, 1) for c in wide.rotation_centres]}
        mon.log(f"no confident alignment yet: a wider search ({name3}; shift ±{wide.max_shift_px:.0f} px, rotation "
                f"±{wide.max_rotation_deg:g}° around {', '.join(f'{c:.0f}°' for c in wide.rotation_centres)}, "
                f"scale ±{wide.max_scale:.0%})")
        with mon.stage(0.7, 1.0, "matching (wider search)"):
            attempt(f"{name3}, wider search", d3, wide, False)
    if not alts:
        raise errors[0]
    try:
        best, decision = decide(alts, config.min_confidence, config.keep_best_guess)
    except NotEnoughMatchesError as err:
        if note.get("error"):
            err.details = (f"{err.details}\nA second opinion ({second}) could not be asked: {note['error']}").strip()
        for an in adapt_notes.values():
            if an and an.get("why"):
                err.details = f"{err.details}\nOn-the-fly adaptation: {an['why']}."
        raise
    if "second opinion" in best.source:
        note.update(used=True, first_descriptor=first_name)
    search_note["chosen"] = best.source
    mon.log(f"decision: {decision.why}")
    k = next(i for i, a in enumerate(alts) if a is best)  # by identity: results hold arrays
    return best.result, best.descriptor, adapt_notes.get(k), note, decision, search_note


def wider_settings(settings: MatchSettings, R, RV, M, MV, any_rotation: bool = False) -> MatchSettings:
    """The second, wider search: twice the shift (at most 30 % of the image), twice the rotation (at least
    ±20°) and 1.5 times the scale range (at most ±25 %); with ``any_rotation`` also around the rotations that
    the images' dominant orientations suggest (:func:`~.matching.orientation.rotation_priors`)."""
    from dataclasses import replace as _replace

    H, W = R.shape[-2:]
    shift = min(2.0 * settings.max_shift_px, max(0.3 * max(H, W), settings.max_shift_px))
    centres: tuple[float, ...] = (0.0,)
    if any_rotation:
        from .matching.orientation import rotation_priors

        centres = (0.0,) + tuple(c for c, _ in rotation_priors(R, RV, M, MV))
    return _replace(settings, max_shift_px=shift, max_rotation_deg=min(max(2.0 * settings.max_rotation_deg, 20.0), 180.0),
                    max_scale=min(1.5 * settings.max_scale, 0.25), rotation_centres=centres)


def coregister(reference: str | os.PathLike, target: str | os.PathLike, outdir: str | os.PathLike,
               config: CoregConfig | None = None, monitor: Monitor | None = None,
               run_id: str | None = None) -> CoregResult:
    """Estimate and apply; writes coregistered.tif, tiepoints.gpkg, correction.json and report.json.

    The four outputs are one set (``io.outputset.OutputSet``): the folder is locked for the whole run
    (:class:`FolderLockedError` if another run holds it), outputs are checked before any work (existing
    ones are refused unless ``config.overwrite``), the free space is checked against the expected size, all
    are written in ``outdir/.hsscl-partial/<run id>/``, and report.json, which lists the others with their
    size and sha256, is renamed into place last. ``run_id`` (optional) names the run in the record.
    """
    config = config or CoregConfig()
    mon = monitor or Monitor()
    with OutputSet(outdir, OUTPUT_NAMES, overwrite=config.overwrite, record="report", run_id=run_id) as outset:
        ref_info, tgt_info = open_raster_info(reference), open_raster_info(target)
        out_grid = ref_info if config.grid == "reference" else tgt_info
        outset.check_space(raster_bytes(out_grid.width, out_grid.height, tgt_info.count, tgt_info.dtypes) + (1 << 18))
        with mon.stage(0.0, 0.8, "estimating the correction"):
            est = estimate(reference, target, config, mon)
        paths = outset.paths
        report = dict(est.report)
        # Everything is written in the run's own hidden folder; a cancel (checked during the warp) or an
        # error leaves nothing new under the final names, and no cancel is checked after the commit (a
        # finished run is never reported as cancelled).
        t = time.perf_counter()
        with mon.stage(0.8, 0.98, "warping (GDAL)"):
            apply_correction(est.correction, est.report["target"]["path"], outset.temp("raster"), overwrite=True,
                             monitor=mon)
        t_warp = time.perf_counter() - t
        dec = est.report.get("decision") or {}
        write_tiepoints_gpkg(outset.temp("tiepoints"), est.tiepoints.as_table(), est.correction.reference,
                             est.correction.target,
                             description=(f"LOW CONFIDENCE ({dec.get('confidence', 0):.0%} < {dec.get('threshold', 0):.0%}):"
                                          " best guess kept; review the tie points" if dec.get("low_confidence")
                                          else f"confidence {dec.get('confidence', 0):.0%}"))
        est.correction.save(outset.temp("correction"))
        report["timings_s"] = {**report["timings_s"], "warp": round(t_warp, 3)}
        report["outputs"] = paths
        mon.check()  # last chance to cancel: after this, the set is committed
        t = time.perf_counter()
        report = outset.commit(report, json_default=_json_default) or report
        report["timings_s"]["record"] = round(time.perf_counter() - t, 3)
    mon.finish("done")
    return CoregResult(str(outset.folder), paths, est, report)


def _json_default(o: Any):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    return str(o)


def apply(source: str | os.PathLike, raster: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False,
          monitor: Monitor | None = None) -> str:
    """Apply the correction of a previous run (its output folder or correction.json) to ``raster``."""
    p = Path(source)
    cj = p / OUTPUT_NAMES["correction"] if p.is_dir() else p
    if not cj.exists():
        raise InputError(f"No correction found at '{cj}'.",
                         "Give the output folder of 'hsscl coregister' (it holds correction.json).")
    return apply_correction(Correction.load(cj), raster, out, overwrite=overwrite, monitor=monitor)


def apply_tiepoints(tiepoints: str | os.PathLike | dict, reference: str | os.PathLike, raster: str | os.PathLike,
                    out: str | os.PathLike, transform: str = "auto", grid: str = "reference",
                    overwrite: bool = False, monitor: Monitor | None = None) -> tuple[str, dict[str, Any]]:
    """Fit ``transform`` to (possibly user-edited) tie points and warp ``raster`` (on the target grid).

    Rows with ``inlier`` = 0 are ignored, so deselecting a point means deleting it or setting inlier to 0.
    Returns the output path and a small report (model, reason, counts, RMSE).
    """
    table = read_tiepoints_gpkg(tiepoints) if not isinstance(tiepoints, dict) else tiepoints
    keep = np.asarray(table.get("inlier", np.ones(len(table["ref_x"]), bool))).astype(bool)
    ref_xy = np.stack([table["ref_x"], table["ref_y"]], 1)[keep].astype(float)
    tgt_xy = np.stack([table["tgt_x"], table["tgt_y"]], 1)[keep].astype(float)
    if len(ref_xy) < 1:
        from .errors import NotEnoughMatchesError

        raise NotEnoughMatchesError("The tie point layer has no usable points (all deleted or marked inlier = 0).",
                                    "Keep at least 3 points for an affine transform.")
    CoregConfig(transform=transform, grid=grid)  # validates the names
    ref_grid = open_raster_info(reference).grid
    tgt_grid = open_raster_info(raster).grid
    a = Affine.fit(ref_xy, tgt_xy).A if len(ref_xy) >= 3 else np.eye(2, 3)
    px_scale = float(np.sqrt(abs(np.linalg.det(a[:, :2])))) or 1.0
    fit = fit_correction(ref_xy, tgt_xy, np.ones(len(ref_xy)), transform, px_scale=px_scale, robust=False)
    correction = Correction(ref_grid, tgt_grid, fit.model, grid)
    path = apply_correction(correction, raster, out, overwrite=overwrite, monitor=monitor)
    return path, {"model": fit.kind, "reason": fit.reason, "points": int(len(ref_xy)),
                  "rmse_fit_px": fit.rmse_fit_px, "rmse_check_px": fit.rmse_check_px}


def match(image_a: str | os.PathLike, image_b: str | os.PathLike, config: CoregConfig | None = None,
          monitor: Monitor | None = None) -> Estimate:
    """Tie points between two images (a = reference, b = target), in each image's pixel coordinates."""
    return estimate(image_a, image_b, config, monitor)
