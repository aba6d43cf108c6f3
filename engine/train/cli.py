"""``hsscl train CONFIG``: train the HSSCL network (and ``python -m hsscl.engine.train.cli``).

Wire into ``engine/cli.py`` with ``add_train_parser(sub)`` on its sub-parsers and, for
``args.command == "train"``, ``return run_train(args)``.
"""
from __future__ import annotations

import argparse
import sys


def add_train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train the HSSCL network (self-supervised, contrastive) from a JSON config")
    p.add_argument("config", help="training config (JSON), e.g. configs/hsscl_gpu.json")
    p.add_argument("-o", "--out", default="out/train", help="run folder: log, checkpoints, weights, summary")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's ckpt.pt")
    p.add_argument("--steps", type=int, help="override the config's step count")
    p.add_argument("--time-budget", type=float, help="stop after this many seconds of training")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--cache", help="training cache (.npz; build it with scripts/build_traincache.py)")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    return p


def run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from .config import TrainConfig
    from .loop import train

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig.load(args.config, steps=args.steps, time_budget_s=args.time_budget, device=args.device,
                           cache=args.cache, seed=args.seed)
    if not Path(cfg.cache).is_file():
        print(f"training cache not found: {cfg.cache}. Build it with: python scripts/build_traincache.py",
              file=sys.stderr)
        return 2
    if cfg.model == "prefilter":
        from .prefilter import train_prefilter

        train_prefilter(cfg, args.out, resume=args.resume, log=lambda m: print(m, flush=True))
        return 0
    if cfg.model != "hsscl":
        print(f"unknown model '{cfg.model}' in {args.config}: use \"hsscl\" or \"prefilter\"", file=sys.stderr)
        return 2
    train(cfg, args.out, resume=args.resume, log=lambda m: print(m, flush=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="hsscl")
    sub = ap.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    return run_train(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
