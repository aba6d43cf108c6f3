"""How far apart the sensors' feature distributions are, per network: the CORAL distance on the validation
locations of a training config (the same warped crops the training run validates on), with the domain
(sensor/source) labels the training loss uses, and the validation loss terms beside it.

    .venv/bin/python scripts/coral_gap.py CONFIG WEIGHTS [WEIGHTS ...]

Used for issue 5's domain-alignment ablation (0.2.0 against the same recipe without CORAL):
the CORAL term is computed here whatever ``coral_weight`` the network was trained with.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile

import torch

from hsscl.engine.network.registry import load_weights
from hsscl.engine.train.config import TrainConfig
from hsscl.engine.train.loop import step_losses, warped_val_batches
from hsscl.engine.train.runner import Setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("weights", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig.load(args.config)
    cfg = dataclasses.replace(cfg, device="cpu", coral_weight=max(cfg.coral_weight, 1.0))
    with tempfile.TemporaryDirectory() as tmp:
        setup = Setup.create(cfg, tmp)
    vwarp = warped_val_batches(setup)
    for w in args.weights:
        model = load_weights(w, device=setup.device).eval()
        with torch.no_grad():
            terms = [step_losses(model, b, cfg, torch.Generator().manual_seed(7), setup.device,
                                 augment_inputs=False)[1] for b in vwarp]
        mean = {k: sum(t[k] for t in terms) / len(terms) for k in terms[0] if isinstance(terms[0][k], float)}
        print(json.dumps({"weights": w, **{k: round(v, 4) for k, v in sorted(mean.items())}}))


if __name__ == "__main__":
    main()
