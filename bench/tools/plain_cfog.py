"""A plain CFOG reference implementation: the matcher the issue that benchmarks us compares against.

CFOG = channel features of orientated gradients (Ye et al., "Fast and robust matching for multimodal remote
sensing image registration", IEEE TGRS 2019): per pixel, the absolute gradient projected on ``N_BINS``
orientations over 180° (so a contrast reversal between modalities does not matter), smoothed in 3-D (a 2-D
Gaussian in the image plane and [1, 2, 1] across neighbouring orientations), then L2-normalised over the
orientations. Matching is template matching on these channels with FFT-based SSD (sum over channels).

The pipeline, as that issue describes it (about 330 lines there; no learned parts, no second opinion, no
confidence):

1. **Global FFT search** on a coarse copy (long side ``COARSE`` px): for every rotation in ±``MAX_ROT``° and scale
   in ±``MAX_SCALE`` (steps 2° and 5 %, then a half-step refinement around the best), the target is warped into
   the reference frame and the shift is found by FFT normalised cross-correlation of the CFOG channels (zero
   mean, masked, shifts up to 20 % of the smaller side). The best (rotation, scale, shift) is kept.
2. **Local templates** at full resolution (long side at most ``WORK`` px): the target is warped by the global
   estimate; templates (64 px; smaller on small images) at the reference's strongest-gradient grid positions are
   matched by FFT SSD within a few pixels, sub-pixel by a parabola through the SSD minimum.
3. **RANSAC affine** (OpenCV, 3 px as the SIFT peer) on the matches; **accepted at >= 6 consistent matches**,
   otherwise the pair is refused.

Runs in the project's ``.venv`` (numpy, scipy, OpenCV 4.10, GDAL) as
``python -m bench.tools.plain_cfog CASE_JSON WORKDIR`` and writes ``result.json`` (``bench/tools/common.py``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.tools.common import gray8, main, threads

N_BINS = 9               # orientations over 180 degrees
SIGMA = 1.0              # Gaussian of the 3-D smoothing, in the image plane (px at the matching resolution)
MAX_ROT, MAX_SCALE = 10.0, 0.10
ROT_STEP, SCALE_STEP = 2.0, 0.05
COARSE = 160             # long side of the global search's copy (px)
WORK = 1024              # long side of the local matching's copy (px)
SHIFT_FRACTION = 0.20    # global search radius: this share of the smaller side
RANSAC_PX = 3.0
MIN_INLIERS = 6
MAX_TEMPLATES = 200


# ---- CFOG ------------------------------------------------------------------------------------------------

def cfog(img: np.ndarray, valid: np.ndarray, sigma: float = SIGMA) -> np.ndarray:
    """(N_BINS, H, W) float32 CFOG channels; zero where the image (eroded by 2 px) is invalid."""
    import cv2

    a = img.astype(np.float32)
    fill = float(a[valid].mean()) if valid.any() else 0.0
    a = np.where(valid, a, fill).astype(np.float32)
    a = cv2.GaussianBlur(a, (0, 0), 0.8)
    k = np.array([[-1.0, 0.0, 1.0]], np.float32)
    gx = cv2.filter2D(a, cv2.CV_32F, k, borderType=cv2.BORDER_REFLECT)
    gy = cv2.filter2D(a, cv2.CV_32F, k.T, borderType=cv2.BORDER_REFLECT)
    ch = np.empty((N_BINS,) + a.shape, np.float32)
    for b in range(N_BINS):
        t = np.pi * b / N_BINS
        ch[b] = cv2.GaussianBlur(np.abs(np.cos(t) * gx + np.sin(t) * gy), (0, 0), sigma)
    ch = (2 * ch + np.roll(ch, 1, axis=0) + np.roll(ch, -1, axis=0)) / 4      # across orientations (circular)
    ch /= np.sqrt((ch ** 2).sum(axis=0)) + 1e-6
    inner = cv2.erode(valid.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    ch[:, ~inner] = 0
    return ch


# ---- geometry helpers (corner coordinates: (0, 0) = top-left corner of the top-left pixel) ------------------

def _sim(theta_deg: float, scale: float, c_from: np.ndarray, c_to: np.ndarray) -> np.ndarray:
    """3x3: p = c_to + scale R(theta) (q - c_from)."""
    a = np.deg2rad(theta_deg)
    A = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    H = np.eye(3)
    H[:2, :2] = A
    H[:2, 2] = c_to - A @ c_from
    return H


def _shift(t: np.ndarray) -> np.ndarray:
    H = np.eye(3)
    H[:2, 2] = t
    return H


def _scale(sx: float, sy: float) -> np.ndarray:
    return np.diag([sx, sy, 1.0])


def _warp_into(img: np.ndarray, valid: np.ndarray, H: np.ndarray, size: tuple[int, int]) -> tuple:
    """Sample ``img`` at H(q) for every pixel q of a (w, h) grid: (image, valid)."""
    import cv2

    S = _shift(np.array([0.5, 0.5]))
    Hi = np.linalg.inv(S) @ H @ S                      # OpenCV: pixel centres at integers
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = cv2.warpAffine(img.astype(np.float32), Hi[:2], size, flags=flags, borderValue=0)
    ok = cv2.warpAffine(valid.astype(np.float32), Hi[:2], size, flags=flags, borderValue=0) > 0.99
    return out, ok


def _down(img: np.ndarray, valid: np.ndarray, f: float) -> tuple:
    """A copy whose sides are 1/f of the original; (image, valid, S) with S the 3x3 original -> copy."""
    import cv2

    h, w = img.shape
    nw, nh = max(8, int(round(w / f))), max(8, int(round(h / f)))
    if (nw, nh) == (w, h):
        return img.astype(np.float32), valid, np.eye(3)
    a = cv2.resize(np.where(valid, img, 0).astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA)
    v = cv2.resize(valid.astype(np.float32), (nw, nh), interpolation=cv2.INTER_AREA)
    a = np.where(v > 0, a / np.maximum(v, 1e-6), 0)
    return a.astype(np.float32), v > 0.99, _scale(nw / w, nh / h)


# ---- 1. global FFT search ----------------------------------------------------------------------------------

def _zero_mean(d: np.ndarray, m: np.ndarray) -> np.ndarray:
    d = d.copy()
    if m.any():
        d -= d[:, m].mean(axis=1)[:, None, None]
    d[:, ~m] = 0
    return d


class _RefSpectra:
    """The reference side of the masked NCC, transformed once for every trial of the global search."""

    def __init__(self, dr: np.ndarray, mr: np.ndarray, radius: float):
        from scipy import fft

        h, w = mr.shape
        pad = int(np.ceil(radius)) + 2                 # shifts up to the radius do not wrap around
        self.shape, self.mr = (fft.next_fast_len(h + pad, True), fft.next_fast_len(w + pad, True)), mr
        r = _zero_mean(dr, mr)
        self.FR = np.conj(fft.rfft2(r, self.shape))
        self.FR2 = np.conj(fft.rfft2((r ** 2).sum(axis=0), self.shape))
        self.FM = np.conj(fft.rfft2(mr.astype(np.float32), self.shape))


def _ncc_shift(ref: _RefSpectra, dw: np.ndarray, mw: np.ndarray, radius: float) -> tuple:
    """Best shift t (q -> q + t in the warped target) by masked, zero-mean NCC over all CFOG channels: (score, t)."""
    from scipy import fft as sfft

    shp = ref.shape
    fft, ifft = sfft.rfft2, sfft.irfft2
    v = _zero_mean(dw, mw)
    corr = ifft((ref.FR * fft(v, shp)).sum(axis=0), shp)
    fmw = fft(mw.astype(np.float32), shp)
    er = ifft(ref.FR2 * fmw, shp)
    ev = ifft(ref.FM * fft((v ** 2).sum(axis=0), shp), shp)
    n = ifft(ref.FM * fmw, shp)
    score = corr / np.sqrt(np.maximum(er * ev, 1e-9))
    ty = np.fft.fftfreq(shp[0], 1 / shp[0])[:, None]
    tx = np.fft.fftfreq(shp[1], 1 / shp[1])[None, :]
    ok = (np.hypot(tx, ty) <= radius) & (n >= 0.3 * min(ref.mr.sum(), mw.sum()))
    if not ok.any():
        return -np.inf, np.zeros(2)
    score = np.where(ok, score, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
    return float(score[iy, ix]), np.array([tx[0, ix], ty[iy, 0]], np.float64)


def global_search(ref: np.ndarray, rv: np.ndarray, tgt: np.ndarray, tv: np.ndarray) -> tuple[np.ndarray, dict]:
    """(H0, info): H0 maps reference pixels to target pixels (full resolution), rotation, scale and shift only."""
    f = max(1.0, max(ref.shape) / COARSE)
    rc, rvc, Sr = _down(ref, rv, f)
    tc, tvc, St = _down(tgt, tv, f)
    size = (rc.shape[1], rc.shape[0])
    cr = np.array([rc.shape[1], rc.shape[0]]) / 2.0
    ct = np.array([tc.shape[1], tc.shape[0]]) / 2.0
    radius = SHIFT_FRACTION * min(rc.shape)
    spectra = _RefSpectra(cfog(rc, rvc, 1.0), rvc, radius)

    def trial(theta: float, s: float) -> tuple[float, np.ndarray]:
        A = _sim(theta, s, cr, ct)
        w, wv = _warp_into(tc, tvc, A, size)
        sc, t = _ncc_shift(spectra, cfog(w, wv, 1.0), wv, radius)
        return sc, A @ _shift(t)

    best = (-np.inf, None, 0.0, 1.0)
    for theta in np.arange(-MAX_ROT, MAX_ROT + 1e-9, ROT_STEP):
        for s in np.arange(1 - MAX_SCALE, 1 + MAX_SCALE + 1e-9, SCALE_STEP):
            sc, A = trial(theta, s)
            if sc > best[0]:
                best = (sc, A, theta, s)
    _, _, th0, s0 = best
    for theta in (th0 - ROT_STEP / 2, th0, th0 + ROT_STEP / 2):
        for s in (s0 - SCALE_STEP / 2, s0, s0 + SCALE_STEP / 2):
            if (theta, s) == (th0, s0):
                continue
            sc, A = trial(theta, s)
            if sc > best[0]:
                best = (sc, A, theta, s)
    sc, A, theta, s = best
    H0 = np.linalg.inv(St) @ A @ Sr
    return H0, {"global_ncc": sc, "rot_deg": float(theta), "scale": float(s), "coarse_factor": f}


# ---- 2. local templates --------------------------------------------------------------------------------------

def _vertex(a: float, b: float, c: float) -> float:
    """Sub-pixel offset of the minimum of a parabola through three neighbouring values (b the smallest)."""
    d = a - 2 * b + c
    return 0.0 if d <= 0 else float(np.clip(0.5 * (a - c) / d, -0.5, 0.5))


def local_matches(ref: np.ndarray, rv: np.ndarray, tgt: np.ndarray, tv: np.ndarray, H0: np.ndarray,
                  coarse_factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Template matches (ref_xy, tgt_xy) in full-resolution pixel corner coordinates."""
    import cv2
    from scipy.signal import fftconvolve

    f = max(1.0, max(ref.shape) / WORK)
    rw, rvw, Sr = _down(ref, rv, f)
    tw, tvw, St = _down(tgt, tv, f)
    Hw = St @ H0 @ np.linalg.inv(Sr)                  # working reference -> working target
    h, w = rw.shape
    wt, wtv = _warp_into(tw, tvw, Hw, (w, h))
    dr, dw = cfog(rw, rvw), cfog(wt, wtv)
    ts = 64 if min(h, w) >= 400 else max(24, (min(h, w) // 5) // 2 * 2)
    r = int(np.clip(np.ceil(2.0 * coarse_factor / f) + 4, 6, 24))
    # template positions: a grid, strongest reference gradients first, fully valid in both images
    gx = cv2.Sobel(rw, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(rw, cv2.CV_32F, 0, 1)
    energy = cv2.boxFilter(np.hypot(gx, gy) * rvw, -1, (ts, ts), normalize=True)
    vr = cv2.boxFilter(rvw.astype(np.float32), -1, (ts, ts), normalize=True)
    vw = cv2.boxFilter(wtv.astype(np.float32), -1, (ts + 2 * r, ts + 2 * r), normalize=True)
    cands = []
    for y0 in range(r, h - ts - r + 1, max(8, ts // 2)):
        for x0 in range(r, w - ts - r + 1, max(8, ts // 2)):
            cy, cx = y0 + ts // 2, x0 + ts // 2
            if vr[cy, cx] > 0.999 and vw[cy, cx] > 0.9:
                cands.append((float(energy[cy, cx]), x0, y0))
    cands.sort(reverse=True)
    ref_xy, war_xy = [], []
    for _, x0, y0 in cands[:MAX_TEMPLATES]:
        tpl = dr[:, y0:y0 + ts, x0:x0 + ts]
        win = dw[:, y0 - r:y0 + ts + r, x0 - r:x0 + ts + r]
        corr = fftconvolve(win, tpl[:, ::-1, ::-1], mode="valid", axes=(1, 2)).sum(axis=0)
        ew = fftconvolve((win ** 2).sum(axis=0), np.ones((ts, ts), np.float32), mode="valid")
        ssd = ew - 2 * corr                            # + sum(tpl^2), the same for every shift
        iy, ix = np.unravel_index(int(np.argmin(ssd)), ssd.shape)
        if iy in (0, ssd.shape[0] - 1) or ix in (0, ssd.shape[1] - 1):
            continue                                   # minimum at the edge of the search: no match
        dx = _vertex(ssd[iy, ix - 1], ssd[iy, ix], ssd[iy, ix + 1])
        dy = _vertex(ssd[iy - 1, ix], ssd[iy, ix], ssd[iy + 1, ix])
        q = np.array([x0 + ts / 2.0, y0 + ts / 2.0])
        ref_xy.append(q)
        war_xy.append(q + np.array([ix - r + dx, iy - r + dy]))
    if not ref_xy:
        return np.zeros((0, 2)), np.zeros((0, 2))
    ref_xy, war_xy = np.array(ref_xy), np.array(war_xy)
    back_r, back_t = np.linalg.inv(Sr), np.linalg.inv(St) @ Hw

    def ap(H, xy):
        return xy @ H[:2, :2].T + H[:2, 2]
    return ap(back_r, ref_xy), ap(back_t, war_xy)


# ---- 3. RANSAC affine and the decision ---------------------------------------------------------------------------

def register(ref: np.ndarray, rv: np.ndarray, tgt: np.ndarray, tv: np.ndarray) -> dict:
    import cv2

    H0, info = global_search(ref, rv, tgt, tv)
    a, b = local_matches(ref, rv, tgt, tv, H0, info["coarse_factor"])
    info["n_templates_matched"] = len(a)
    if len(a) < MIN_INLIERS:
        return {"ok": False, "error": f"{len(a)} template matches (fewer than {MIN_INLIERS})", "n_raw": len(a),
                **info}
    A, inl = cv2.estimateAffine2D(a.astype(np.float32), b.astype(np.float32), method=cv2.RANSAC,
                                  ransacReprojThreshold=RANSAC_PX, maxIters=5000, confidence=0.999)
    inl = inl.ravel().astype(bool) if inl is not None else np.zeros(len(a), bool)
    if A is None or inl.sum() < MIN_INLIERS:
        return {"ok": False, "error": f"{int(inl.sum())} consistent matches (fewer than {MIN_INLIERS})",
                "n_raw": len(a), **info}
    H = np.eye(3)
    H[:2] = A
    return {"model": H, "ref_xy": a[inl], "tgt_xy": b[inl], "n_raw": len(a), "n_inliers": int(inl.sum()), **info}


def run(case: dict, workdir: Path) -> dict:
    import cv2

    cv2.setRNGSeed(0)
    cv2.setNumThreads(threads())
    ref, rv = gray8(case["reference"])
    tgt, tv = gray8(case["target"])
    return register(ref.astype(np.float32), rv, tgt.astype(np.float32), tv)


if __name__ == "__main__":
    main(run)
