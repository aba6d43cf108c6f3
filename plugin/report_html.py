"""A self-contained HTML report of a co-registration: summary, tie point figures (inline SVG) and a small
before/after view (inline PNG). Uses GDAL and numpy only, so it runs in a Processing worker thread."""
from __future__ import annotations

import base64
import html
import json
import math
import uuid
from typing import Any

import numpy as np

PREVIEW = 640  # pixels of the before/after views (longest side)


# ---- data -------------------------------------------------------------------------------------------------
def read_tiepoints(gpkg: str) -> list[dict[str, Any]]:
    from osgeo import ogr

    ds = ogr.Open(gpkg)
    if ds is None:
        return []
    layer = ds.GetLayerByName("tiepoints") or ds.GetLayer(0)
    names = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
    rows = [{n: f.GetField(n) for n in names} for f in layer]
    ds = None
    return rows


def _georeferenced(ds) -> bool:
    return bool(ds.GetProjection()) and ds.GetGeoTransform(can_return_null=True) is not None


def preview(path: str, reference: str, size: int = PREVIEW) -> np.ndarray | None:
    """First band(s) of ``path`` resampled onto a small version of the reference's footprint, scaled 0..1."""
    from osgeo import gdal

    ref = gdal.Open(reference)
    src = gdal.Open(path)
    if ref is None or src is None:
        return None
    scale = size / max(ref.RasterXSize, ref.RasterYSize)
    w, h = max(1, round(ref.RasterXSize * scale)), max(1, round(ref.RasterYSize * scale))
    bands = list(range(1, min(3, src.RasterCount) + 1))
    if _georeferenced(ref) and _georeferenced(src):
        gt = ref.GetGeoTransform()
        xs = [gt[0], gt[0] + gt[1] * ref.RasterXSize + gt[2] * ref.RasterYSize]
        ys = [gt[3], gt[3] + gt[4] * ref.RasterXSize + gt[5] * ref.RasterYSize]
        out = gdal.Warp("", src, format="MEM", outputBounds=(min(xs), min(ys), max(xs), max(ys)),
                        dstSRS=ref.GetProjection(), width=w, height=h, resampleAlg="average",
                        dstNodata=float("nan"), outputType=gdal.GDT_Float32)
    else:
        out = gdal.Translate("", src, format="MEM", width=w, height=h, resampleAlg="average",
                             outputType=gdal.GDT_Float32, bandList=bands)
        bands = list(range(1, out.RasterCount + 1))
    if out is None:
        return None
    data = np.stack([out.GetRasterBand(b).ReadAsArray().astype(np.float32) for b in bands if b <= out.RasterCount])
    for i, b in enumerate(bands[: data.shape[0]]):
        nodata = src.GetRasterBand(b).GetNoDataValue()
        if nodata is not None and not math.isnan(nodata):
            data[i][data[i] == nodata] = np.nan
    img = _mean_of_finite(data) if data.shape[0] > 1 else data[0]
    return _stretch(img)


def _mean_of_finite(data: np.ndarray) -> np.ndarray:
    """Mean over the first axis of the finite values; NaN where none (np.nanmean without its warning)."""
    finite = np.isfinite(data)
    count = finite.sum(axis=0)
    total = np.where(finite, data, 0.0).sum(axis=0)
    out = np.full(count.shape, np.nan, dtype=np.float32)
    np.divide(total, count, out=out, where=count > 0)
    return out


def _stretch(img: np.ndarray) -> np.ndarray:
    finite = np.isfinite(img)
    if not finite.any():
        return np.zeros_like(img)
    lo, hi = np.percentile(img[finite], [2, 98])
    out = np.clip((img - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    out[~finite] = 0
    return out


def overlay(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    """RGB: reference in magenta, the other image in green (grey where they agree). (3, H, W) uint8."""
    h, w = min(ref.shape[0], other.shape[0]), min(ref.shape[1], other.shape[1])
    r, o = ref[:h, :w], other[:h, :w]
    return (np.stack([r, o, r]) * 255).astype(np.uint8)


def checkerboard(ref: np.ndarray, other: np.ndarray, tile: int = 32) -> np.ndarray:
    h, w = min(ref.shape[0], other.shape[0]), min(ref.shape[1], other.shape[1])
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy // tile + xx // tile) % 2) == 0
    img = np.where(mask, ref[:h, :w], other[:h, :w])
    return (np.stack([img, img, img]) * 255).astype(np.uint8)


def png_data_uri(rgb: np.ndarray) -> str:
    """(3, H, W) uint8 -> data:image/png;base64,..."""
    from osgeo import gdal

    mem = gdal.GetDriverByName("MEM").Create("", rgb.shape[2], rgb.shape[1], 3, gdal.GDT_Byte)
    for i in range(3):
        mem.GetRasterBand(i + 1).WriteArray(rgb[i])
    name = f"/vsimem/hsscl_{uuid.uuid4().hex}.png"
    gdal.GetDriverByName("PNG").CreateCopy(name, mem)
    f = gdal.VSIFOpenL(name, "rb")
    gdal.VSIFSeekL(f, 0, 2)
    size = gdal.VSIFTellL(f)
    gdal.VSIFSeekL(f, 0, 0)
    data = gdal.VSIFReadL(1, size, f)
    gdal.VSIFCloseL(f)
    gdal.Unlink(name)
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# ---- figures ----------------------------------------------------------------------------------------------
# same classes and colours as resources/styles/tiepoints.qml
RESIDUAL_CLASSES = ((0.5, "#1a9641"), (1.0, "#a6d96a"), (2.0, "#ffffbf"), (5.0, "#fdae61"), (math.inf, "#d7191c"))


def _residual_colour(r: float) -> str:
    for upper, colour in RESIDUAL_CLASSES:
        if r <= upper:
            return colour
    return RESIDUAL_CLASSES[-1][1]


def _num(row: dict, key: str, default: float = float("nan")) -> float:
    try:
        value = row.get(key)
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def tiepoints_svg(rows: list[dict[str, Any]], width: int, height: int, size: int = 360) -> str:
    """Tie points at their reference pixel position, coloured by residual; outliers as grey crosses."""
    if not rows or width <= 0 or height <= 0:
        return "<p>No tie points.</p>"
    s = size / max(width, height)
    w, h = width * s, height * s
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0f}" height="{h:.0f}" '
             f'viewBox="0 0 {w:.1f} {h:.1f}"><rect x="0" y="0" width="{w:.1f}" height="{h:.1f}" fill="#f4f4f4" '
             'stroke="#999"/>']
    for r in rows:
        x, y = _num(r, "ref_x") * s, _num(r, "ref_y") * s
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        res = _num(r, "residual_px", 0.0)
        if _num(r, "inlier", 1):
            shape = "rect" if _num(r, "check", 0) else "circle"
            colour = _residual_colour(res)
            if shape == "rect":
                parts.append(f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="{colour}" '
                             f'stroke="#333" stroke-width="0.6"><title>check point, residual {res:.2f} px</title></rect>')
            else:
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}" stroke="#333" '
                             f'stroke-width="0.6"><title>residual {res:.2f} px</title></circle>')
        else:
            parts.append(f'<path d="M{x - 3:.1f},{y - 3:.1f}L{x + 3:.1f},{y + 3:.1f}M{x - 3:.1f},{y + 3:.1f}'
                         f'L{x + 3:.1f},{y - 3:.1f}" stroke="#ff28c8" stroke-width="1.4"><title>outlier</title></path>')
    parts.append("</svg>")
    return "".join(parts)


def histogram_svg(rows: list[dict[str, Any]], width: int = 360, height: int = 160, bins: int = 20) -> str:
    values = np.array([_num(r, "residual_px") for r in rows if _num(r, "inlier", 1)], dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return "<p>No residuals.</p>"
    top = max(float(np.percentile(values, 99)), 1e-3)
    counts, edges = np.histogram(np.clip(values, 0, top), bins=bins, range=(0, top))
    pad, cmax = 24, max(1, int(counts.max()))
    bw = (width - 2 * pad) / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">']
    for i, c in enumerate(counts):
        bh = (height - 2 * pad) * c / cmax
        parts.append(f'<rect x="{pad + i * bw:.1f}" y="{height - pad - bh:.1f}" width="{bw - 1:.1f}" '
                     f'height="{bh:.1f}" fill="#3a7dbf"><title>{edges[i]:.2f}–{edges[i + 1]:.2f} px: {c}</title></rect>')
    parts.append(f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="#333"/>')
    parts.append(f'<text x="{pad}" y="{height - 6}" font-size="11">0</text>'
                 f'<text x="{width - pad}" y="{height - 6}" font-size="11" text-anchor="end">{top:.2f} px</text>'
                 f'<text x="{pad}" y="14" font-size="11">inlier residuals (n = {values.size})</text>')
    parts.append("</svg>")
    return "".join(parts)


# ---- page -------------------------------------------------------------------------------------------------
def _summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []

    def add(prefix: str, value: Any, depth: int) -> None:
        if isinstance(value, dict) and depth < 2:
            for k, v in value.items():
                add(f"{prefix}.{k}" if prefix else str(k), v, depth + 1)
        elif isinstance(value, float):
            rows.append((prefix, f"{value:.4g}"))
        elif isinstance(value, (int, str, bool)) or value is None:
            rows.append((prefix, str(value)))
        elif isinstance(value, (list, tuple)) and len(value) <= 8 and all(
                isinstance(v, (int, float, str)) for v in value):
            rows.append((prefix, ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value)))

    add("", report, 0)
    return rows


def _fmt(value: Any, digits: int = 2, unit: str = "") -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return f"{number:.{digits}f}{unit}" if math.isfinite(number) else "n/a"


def headline(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The few numbers a user judges a run by: RMSE (check points, else fit), model, confidence, counts."""
    rows: list[tuple[str, str]] = []
    rmse = report.get("rmse_px")
    if isinstance(rmse, dict):
        if rmse.get("check") is not None:
            rows.append(("RMSE on check points", _fmt(rmse["check"], unit=" px")))
        if rmse.get("fit") is not None:
            rows.append(("RMSE of the fit", _fmt(rmse["fit"], unit=" px")))
    elif rmse is not None:
        rows.append(("RMSE", _fmt(rmse, unit=" px")))
    model = report.get("model")
    if isinstance(model, dict) and model.get("kind"):
        rows.append(("Model", str(model["kind"])))
    elif model:
        rows.append(("Model", str(model)))
    confidence = report.get("confidence")
    if confidence is not None:
        rows.append(("Confidence (within 3 px)", _fmt(100.0 * float(confidence), 0, " %")
                     if isinstance(confidence, (int, float)) else str(confidence)))
    counts = report.get("counts")
    if isinstance(counts, dict):
        text = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items() if isinstance(v, (int, float)))
        if text:
            rows.append(("Tie points", text))
    if report.get("descriptor"):
        second = report.get("second_opinion") or {}
        rows.append(("Descriptor", str(report["descriptor"]) + (" (second opinion)" if second.get("used") else "")))
    return rows


def build_report_html(report: dict[str, Any], tiepoints_gpkg: str, reference: str, target: str,
                      coregistered: str | None, title: str = "", outputs: dict[str, str] | None = None) -> str:
    """The report page. ``outputs`` (name -> path) are the user's files, listed instead of the engine's
    work-folder paths in ``report["outputs"]``."""
    from osgeo import gdal

    report = dict(report)
    if outputs is not None:
        report["outputs"] = {k: v for k, v in outputs.items() if v}
    rows = read_tiepoints(tiepoints_gpkg) if tiepoints_gpkg else []
    ref = gdal.Open(reference)
    width, height = (ref.RasterXSize, ref.RasterYSize) if ref is not None else (0, 0)
    ref = None
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             f"<title>HSSCL Co-register report {html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:13px}"
             "figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}"
             "figcaption{font-size:12px;color:#555}img{image-rendering:pixelated;border:1px solid #999;"
             "max-width:100%;height:auto}table.headline td,table.headline th{font-size:16px;padding:4px 12px}"
             "</style></head><body>",
             f"<h1>HSSCL Co-register</h1><p>{html.escape(title)}</p>"]
    summary = headline(report)
    if not summary:
        n_in = sum(1 for r in rows if _num(r, "inlier", 0))
        summary = [("Tie points", f"{len(rows)} ({n_in} inliers)")]
    parts.append("<table class='headline'>")
    for key, value in summary:
        parts.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(value)}</td></tr>")
    parts.append("</table>")
    befaft_at = len(parts)
    parts.append("<h2>Tie points</h2>")
    parts.append(f"<figure>{tiepoints_svg(rows, width, height)}<figcaption>Tie points on the reference "
                 "(residual ≤ 0.5 px dark green, ≤ 1 light green, ≤ 2 yellow, ≤ 5 orange, more red; squares: check "
                 "points; magenta crosses: outliers)"
                 "</figcaption></figure>")
    parts.append(f"<figure>{histogram_svg(rows)}<figcaption>Residuals of the inliers</figcaption></figure>")
    ref_img = preview(reference, reference)
    before = preview(target, reference)
    after = preview(coregistered, reference) if coregistered else None
    if ref_img is not None and before is not None:
        views = [("Before: overlay", overlay(ref_img, before))]
        if after is not None:
            views.append(("After: overlay", overlay(ref_img, after)))
        views.append(("Before: checkerboard", checkerboard(ref_img, before)))
        if after is not None:
            views.append(("After: checkerboard", checkerboard(ref_img, after)))
        block = ["<h2>Before / after</h2>"]
        for caption, img in views:
            block.append(f"<figure><img src='{png_data_uri(img)}' width='{img.shape[2]}' height='{img.shape[1]}'"
                         f" alt='{caption}'><figcaption>{caption}</figcaption></figure>")
        block.append("<p style='font-size:12px'>Overlay: reference in magenta, target in green; grey where they "
                     "agree.</p>")
        parts[befaft_at:befaft_at] = block  # right after the headline numbers
    if report.get("outputs"):
        parts.append("<h2>Files</h2><ul>")
        for key, value in dict(report["outputs"]).items():
            parts.append(f"<li>{html.escape(str(key))}: <code>{html.escape(str(value))}</code></li>")
        parts.append("</ul>")
    parts.append("<details><summary>All details</summary><table>")
    for key, value in _summary_rows(report):
        parts.append(f"<tr><th>{html.escape(key)}</th><td>{html.escape(value)}</td></tr>")
    parts.append("</table></details>")
    parts.append("<details><summary>report.json</summary><pre>"
                 + html.escape(json.dumps(report, indent=2, default=str)) + "</pre></details>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report_html(path: str, report: dict[str, Any], tiepoints_gpkg: str, reference: str, target: str,
                      coregistered: str | None, title: str = "", outputs: dict[str, str] | None = None) -> str:
    text = build_report_html(report, tiepoints_gpkg, reference, target, coregistered, title, outputs)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
