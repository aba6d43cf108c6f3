"""Experiment (docs/ablation/sar-descriptor-variants.md, "Larger templates"): SAR-optical crops of the training
cache (held-out locations excluded) matched by CFOG with the smallest template at the default (32 px), 48 and
64 px; per crop: (confidence, error of the delivered model against the known warp, template used).

    .venv/bin/python docs/ablation/sar_template_sizes.py 20 SEED > records.jsonl    (seeds 31 and 32)
"""
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the folder holding the hsscl package
torch.set_num_threads(1)
from hsscl.engine.descriptors.base import get_descriptor  # noqa: E402
from hsscl.engine.errors import HSSCLError  # noqa: E402
from hsscl.engine.fitting import fit_correction  # noqa: E402
from hsscl.engine.matching.matcher import MatchSettings, match_pair  # noqa: E402
from hsscl.engine.train.data import PairCache, WarpRange  # noqa: E402
from hsscl.engine.train.verifier import CONFIG, ROOT, _affine_error  # noqa: E402

N, seed = int(sys.argv[1]), int(sys.argv[2])
exclude = json.loads(CONFIG.read_text()).get("exclude_keys", [])
cache = PairCache(ROOT / ".traincache" / "hsscl_pairs.npz", split="all", exclude=exclude, residuals=True)
pool = [k for k in range(len(cache.pairs)) if str(cache.kinds[k]) == "sar-opt"]
gen = torch.Generator().manual_seed(seed)
rng = np.random.default_rng(seed)
cfog = get_descriptor("cfog")
for i in range(N):
    k = pool[int(rng.integers(len(pool)))]
    h, w = cache.images[int(cache.pairs[k][0])].shape[-2:]
    size = int(min(512, max(96, min(h, w) / 1.15 // 16 * 16)))
    warp = WarpRange(rotation_deg=4.0, log_scale=0.05, shear=0.0, shift_px=0.15 * size)
    b = cache.sample(1, size, gen, warp=warp, index=[k])
    H = b.H[0].double().numpy()
    rec = {"key": str(cache.keys[k]), "size": size}
    for t in (0, 48, 64):
        s = MatchSettings(max_shift_px=max(0.15 * size, 40.0) + 8, seed=i)
        if t:
            s = replace(s, min_template=t)
        try:
            res = match_pair(b.a, b.va, b.b, b.vb, cfog, s)
            m = res.matches
            fit = fit_correction(m.ref_xy, m.mov_xy, m.score, "auto", seed=0)
            rec[t] = (round(res.confidence, 3), round(_affine_error(fit.model, H, size), 2), res.template)
        except HSSCLError:
            rec[t] = (0.0, 1e9, None)
    print(json.dumps(rec), flush=True)
