"""OpenCV SIFT + ratio test 0.85 + MAGSAC affine: what a GIS user tries first (shared/PEERS.md)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.tools.common import gray8, main, threads


def run(case: dict, workdir: Path) -> dict:
    import cv2

    cv2.setRNGSeed(0)
    cv2.setNumThreads(threads())
    ref, rv = gray8(case["reference"])
    tgt, tv = gray8(case["target"])
    sift = cv2.SIFT_create(nfeatures=8000)
    k1, d1 = sift.detectAndCompute(ref, rv.astype(np.uint8) * 255)
    k2, d2 = sift.detectAndCompute(tgt, tv.astype(np.uint8) * 255)
    if d1 is None or d2 is None or len(k1) < 3 or len(k2) < 3:
        return {"ok": False, "error": "too few SIFT keypoints", "n_raw": 0}
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.85 * n.distance]
    if len(good) < 3:
        return {"ok": False, "error": f"{len(good)} matches after the ratio test", "n_raw": len(good)}
    a = np.float32([k1[m.queryIdx].pt for m in good]) + 0.5   # OpenCV: pixel centre at integers
    b = np.float32([k2[m.trainIdx].pt for m in good]) + 0.5
    A, inl = cv2.estimateAffine2D(a, b, method=cv2.USAC_MAGSAC, ransacReprojThreshold=3.0,
                                  maxIters=10000, confidence=0.999)
    if A is None:
        return {"ok": False, "error": "MAGSAC found no affine", "n_raw": len(good)}
    inl = inl.ravel().astype(bool)
    H = np.eye(3)
    H[:2] = A
    return {"model": H, "ref_xy": a[inl], "tgt_xy": b[inl], "n_raw": len(good)}


if __name__ == "__main__":
    main(run)
