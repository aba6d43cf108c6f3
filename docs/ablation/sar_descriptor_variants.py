"""Experiment (docs/ablation/sar-descriptor-variants.md): SAR crops of the training cache (held-out locations
excluded), matched with CFOG variants; the delivered model's error against the known warp, per variant.

    .venv/bin/python docs/ablation/sar_descriptor_variants.py N SEED cfog,lc,ms,s16 > records.jsonl
"""
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the folder holding the hsscl package
torch.set_num_threads(1)
from hsscl.engine.descriptors.base import get_descriptor  # noqa: E402
from hsscl.engine.descriptors.cfog import CFOG  # noqa: E402
from hsscl.engine.errors import HSSCLError, NotEnoughMatchesError  # noqa: E402
from hsscl.engine.fitting import fit_correction  # noqa: E402
from hsscl.engine.matching.matcher import MatchSettings, match_pair  # noqa: E402
from hsscl.engine.train.data import PairCache, WarpRange  # noqa: E402
from hsscl.engine.train.verifier import CONFIG, ROOT, _affine_error  # noqa: E402


def _delivered_error(res, H, size, negative):
    m = res.matches
    try:
        fit = fit_correction(m.ref_xy, m.mov_xy, m.score, "auto", seed=0)
        return _affine_error(fit.model, H, size), fit.kind
    except NotEnoughMatchesError:
        return 1e9, "refused"


@dataclass(frozen=True)
class MS:
    name: str = "ms"
    sigmas: tuple = (0.8, 2.0)
    @property
    def channels(self): return 9 * len(self.sigmas)
    def __call__(self, images, valid=None):
        d = torch.cat([CFOG(sigma=s)(images, valid) for s in self.sigmas], 1)
        return d / math.sqrt(len(self.sigmas))

N, seed, variants = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
D = {"cfog": get_descriptor("cfog"), "lc": get_descriptor("learned-cfog"), "ms": MS(), "s16": CFOG(sigma=1.6),
     "ms3": MS(sigmas=(0.8, 1.6, 3.2))}
exclude = json.loads(CONFIG.read_text()).get("exclude_keys", [])
cache = PairCache(ROOT / ".traincache" / "hsscl_pairs.npz", split="all", exclude=exclude, residuals=True)
sar = [k for k in range(len(cache.pairs)) if str(cache.kinds[k]).startswith("sar")]
gen = torch.Generator().manual_seed(seed)
rng = np.random.default_rng(seed)
for i in range(N):
    k = sar[int(rng.integers(len(sar)))]
    ia = int(cache.pairs[k][0])
    h, w = cache.images[ia].shape[-2:]
    size = int(min(512, max(96, min(h, w) / 1.15 // 16 * 16)))
    warp = WarpRange(rotation_deg=4.0, log_scale=0.05, shear=0.0, shift_px=0.15 * size)
    b = cache.sample(1, size, gen, warp=warp, index=[k])
    H = b.H[0].double().numpy()
    rec = {"i": i, "key": str(cache.keys[k]), "kind": str(cache.kinds[k]), "size": size}
    for v in variants:
        s = MatchSettings(max_shift_px=max(0.15 * size, 40.0) + 8, seed=i)
        t0 = time.perf_counter()
        try:
            res = match_pair(b.a, b.va, b.b, b.vb, D[v], s)
            err, kind = _delivered_error(res, H, size, False)
            rec[v] = {"conf": res.confidence, "err": err, "model": kind, "s": time.perf_counter() - t0}
        except HSSCLError as e:
            rec[v] = {"conf": 0.0, "err": 1e9, "refused": str(e)[:80], "s": time.perf_counter() - t0}
    print(json.dumps(rec), flush=True)
