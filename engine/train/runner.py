"""The training run shared by the network (:mod:`.loop`) and the pre-filter (:mod:`.prefilter`).

Seeded, checkpointed and resumable; a warm-up then cosine learning rate over the step or time budget;
one JSON line per logged step and per validation (``train_log.jsonl``); validation on held-out pairs
every ``val_every`` steps with the best checkpoint kept (``<stem>_best.safetensors``); final weights
(``<stem>.safetensors``), ``ckpt.pt`` (model + optimiser + RNG state, loaded with ``weights_only=True``)
and ``summary.json``. What differs between the two models comes in as functions: the loss of a batch,
the validation, how weights are saved, and how a step and a validation are printed.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..device import resolve_device
from ..network.registry import sha256
from .config import TrainConfig
from .data import PairCache, WarpRange


def pick_device(name: str) -> torch.device:
    """The training device, chosen as the engine chooses (:func:`~hsscl.engine.device.resolve_device`); a CUDA
    request without a usable GPU runs on the CPU with a warning saying so."""
    device, note = resolve_device(name)
    if note:
        warnings.warn(note, stacklevel=2)
    return device


def lr_factor(progress: float, step: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def save_ckpt(path: Path, model, opt, step: int, gen: torch.Generator, elapsed: float, best: float) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": torch.tensor(step),
                "gen": gen.get_state(), "elapsed": torch.tensor(elapsed), "best": torch.tensor(best)}, tmp)
    os.replace(tmp, path)


@dataclass
class Setup:
    """What a run starts from: its folder, device, seeded generator and the two pair sets."""
    cfg: TrainConfig
    out: Path
    device: torch.device
    gen: torch.Generator
    train_set: PairCache
    val_set: PairCache
    warp: WarpRange

    @classmethod
    def create(cls, cfg: TrainConfig, out_dir: str | Path) -> Setup:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        sets = [PairCache(cfg.cache, split, device, exclude=cfg.exclude_keys, val_keys=cfg.val_keys,
                          residuals=cfg.residuals) for split in ("train", "val")]
        return cls(cfg, out, device, gen, sets[0], sets[1], WarpRange(**cfg.warp))


@dataclass
class Hooks:
    """The model-specific parts of a run.

    step(batch, progress) -> (loss, logged terms); validate() -> dict with a ``select`` value (higher is
    better; the best checkpoint is kept by it); save(model, path, metadata) -> sha256;
    describe_step(terms) and describe_val(result) -> the text printed after the step / validation prefix.
    """
    step: Callable[[Any, float], tuple[torch.Tensor, dict[str, float]]]
    validate: Callable[[], dict[str, Any]]
    save: Callable[[nn.Module, Path, dict], str]
    describe_step: Callable[[dict[str, float]], str]
    describe_val: Callable[[dict[str, Any]], str]


def run(setup: Setup, model: nn.Module, hooks: Hooks, stem: str, baseline: dict[str, Any], resume: bool,
        log: Callable[[str], None], emit: Callable[[dict], None], summary_extra: dict[str, Any]) -> dict[str, Any]:
    """Train ``model`` until the config's step or time budget; return (and write) the summary."""
    cfg, out, gen = setup.cfg, setup.out, setup.gen
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed0, best = 0, 0.0, -1.0
    ckpt = out / "ckpt.pt"
    if resume and ckpt.is_file():
        st = torch.load(ckpt, map_location=setup.device, weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        step, elapsed0, best = int(st["step"]), float(st["elapsed"]), float(st["best"])
        log(f"resumed from {ckpt} at step {step}")
    best_file, final_file = out / f"{stem}_best.safetensors", out / f"{stem}.safetensors"

    def validate_and_keep(final: bool = False) -> dict[str, Any]:
        nonlocal best
        v = hooks.validate()
        emit({"event": "val", "step": step, **({"final": True} if final else {}), **v})
        if v["select"] > best:
            best = v["select"]
            hooks.save(model, best_file, {"step": step, "val_select": best})
        return v

    t0 = time.perf_counter()
    history: list[dict] = []
    model.train()
    while step < cfg.steps:
        elapsed = elapsed0 + time.perf_counter() - t0
        if cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s:
            break
        progress = max(step / cfg.steps, elapsed / cfg.time_budget_s if cfg.time_budget_s else 0.0)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(progress, step, cfg.warmup)
        batch = setup.train_set.sample(cfg.batch, cfg.crop, gen, setup.warp, cfg.p_denoised, cfg.p_band_mix)
        loss, terms = hooks.step(batch, progress)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % cfg.log_every == 0 or step == 1:
            rec = {"step": step, "time_s": round(elapsed, 1), "lr": opt.param_groups[0]["lr"], **terms}
            emit(rec)
            history.append(rec)
            log(f"step {step:6d} {elapsed:7.1f}s {hooks.describe_step(terms)}")
        if step % cfg.val_every == 0:
            log(f"  val step {step}: {hooks.describe_val(validate_and_keep())}")
        if step % cfg.ckpt_every == 0:
            save_ckpt(ckpt, model, opt, step, gen, elapsed0 + time.perf_counter() - t0, best)
    elapsed = elapsed0 + time.perf_counter() - t0
    final_val = validate_and_keep(final=True)
    save_ckpt(ckpt, model, opt, step, gen, elapsed, best)
    digest = hooks.save(model, final_file, {"step": step, "val_select": final_val["select"]})
    device = setup.device
    summary = {
        "name": cfg.name, "version": cfg.version, "model": cfg.model, "steps": step, "seconds": round(elapsed, 1),
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "torch": torch.__version__, "parameters": sum(p.numel() for p in model.parameters()),
        "train_pairs": len(setup.train_set), "val_pairs": len(setup.val_set),
        "train_sources": sorted(set(setup.train_set.sources.tolist())),
        "val_keys": sorted(set(setup.val_set.keys.tolist())), "excluded_keys": list(cfg.exclude_keys),
        "first_log": history[0] if history else None, "last_log": history[-1] if history else None,
        "val_final": final_val, "val_best_pck1": best, "cfog_val": baseline,
        "weights": final_file.name, "sha256": digest,
        "best_weights": best_file.name if best_file.is_file() else None,
        "best_sha256": sha256(best_file) if best_file.is_file() else None,
        "config": cfg.to_dict(), **summary_extra,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log(f"done: {step} steps in {elapsed:.0f} s; held-out {hooks.describe_val(final_val)} (best {best:.3f}); "
        f"weights {final_file} sha256 {digest[:12]}")
    return summary


def open_log(out: Path) -> tuple[Callable[[dict], None], Callable[[], None]]:
    """``emit(record)`` appending JSON lines to ``out/train_log.jsonl``, and its ``close()``."""
    f = open(out / "train_log.jsonl", "a")

    def emit(rec: dict) -> None:
        f.write(json.dumps(rec) + "\n")
        f.flush()

    return emit, f.close
