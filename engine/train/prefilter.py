"""Training of the learned pre-filter of CFOG (``"model": "prefilter"`` in a training config).

Same data path as the network (:class:`.data.PairCache`: real co-registered pairs, random crops and known
warps, modality-randomising augmentation), one loss: the template-matching loss
(:func:`.losses.template_loss`) on CFOG of the pre-filtered crops, i.e. the engine's fine matching step
with a softmax over shifts pushed onto the known one. Pairs whose key is in ``exclude_keys`` are never
read (training or validation). Seeded, checkpointed and resumable like :mod:`.loop`; validation is the
held-out shift PCK of :mod:`.validate` for the learned descriptor beside plain CFOG.

Outputs in ``out_dir``: ``train_log.jsonl``, ``ckpt.pt``, ``prefilter.safetensors`` (final),
``prefilter_best.safetensors`` (best held-out PCK@1) and ``summary.json``.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..descriptors.cfog import CFOG
from ..descriptors.learned_cfog import LearnedCFOG
from ..network.prefilter import PreFilter, PreFilterConfig, load_prefilter, save_prefilter
from ..network.registry import sha256
from .augment import augment
from .config import TrainConfig
from .data import PairCache, WarpRange
from .loop import _lr_factor, _save_ckpt, pick_device
from .losses import template_loss
from .validate import fixed_shift_batches, shift_pck


def prefilter_step(model: PreFilter, batch, cfg: TrainConfig, gen: torch.Generator, device: torch.device,
                   augment_inputs: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch and its logged terms."""
    mod_a, mod_b = batch.mod_a.to(device), batch.mod_b.to(device)
    if augment_inputs:
        a = augment(batch.a, batch.va, mod_a, gen)
        b = augment(batch.b, batch.vb, mod_b, gen)
    else:
        a, b = batch.a, batch.b
    a, b = a * batch.va, b * batch.vb
    cfog = CFOG()
    da, db = cfog(model(a), batch.va), cfog(model(b), batch.vb)
    loss, st = template_loss(da, batch.va, db, batch.vb, batch.H, gen, template=cfg.tm_template,
                             radius=cfg.tm_radius, n=cfg.tm_n, scale=cfg.tm_scale,
                             label_sigma=cfg.tm_label_sigma)
    return loss, {"loss": float(loss.detach()), "tm_acc": st["acc"], "templates": st["n"]}


def train_prefilter(cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_set = PairCache(cfg.cache, "train", device, exclude=cfg.exclude_keys, val_keys=cfg.val_keys,
                          residuals=cfg.residuals)
    val_set = PairCache(cfg.cache, "val", device, exclude=cfg.exclude_keys, val_keys=cfg.val_keys,
                        residuals=cfg.residuals)
    warp = WarpRange(**cfg.warp)
    if cfg.init_weights:
        model = load_prefilter(cfg.init_weights, device=device)
        log(f"starting from {cfg.init_weights}")
    else:
        model = PreFilter(PreFilterConfig.from_dict(cfg.prefilter)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed0, best = 0, 0.0, -1.0
    ckpt = out / "ckpt.pt"
    if resume and ckpt.is_file():
        st = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        step, elapsed0, best = int(st["step"]), float(st["elapsed"]), float(st["best"])
        log(f"resumed from {ckpt} at step {step}")
    logf = open(out / "train_log.jsonl", "a")

    def emit(rec: dict) -> None:
        logf.write(json.dumps(rec) + "\n")
        logf.flush()

    if cfg.residuals:
        rec = train_set.residual_records + val_set.residual_records
        emit({"event": "residuals", "pairs": rec})
        log(f"residual offsets: {sum(r.get('verified', False) for r in rec)} of {len(rec)} pairs verified; "
            f"kept {len(train_set)} train / {len(val_set)} held-out pairs")
    log(f"pre-filter on {device}; {model.n_parameters():,} parameters; {len(train_set)} train / {len(val_set)} "
        f"held-out pairs; sources {sorted(set(train_set.sources))}; excluded keys {list(cfg.exclude_keys)}")
    vb = fixed_shift_batches(val_set, cfg.val_batches, 16, cfg.crop)
    cfog_val = shift_pck(CFOG(), vb, device=device)
    emit({"event": "baseline", "cfog": cfog_val})
    log(f"held-out shift PCK, CFOG: pck1 {cfog_val['pck1']:.3f} pck2 {cfog_val['pck2']:.3f} "
        f"median {cfog_val['median_px']:.2f} px (n={cfog_val['n']})")

    def validate() -> dict:
        model.eval()
        with torch.no_grad():
            res = shift_pck(LearnedCFOG(model, device), vb, device=device)
        model.train()
        return res

    t0 = time.perf_counter()
    history = []
    model.train()
    while step < cfg.steps:
        elapsed = elapsed0 + time.perf_counter() - t0
        if cfg.time_budget_s is not None and elapsed >= cfg.time_budget_s:
            break
        progress = max(step / cfg.steps, elapsed / cfg.time_budget_s if cfg.time_budget_s else 0.0)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(progress, step, cfg.warmup)
        batch = train_set.sample(cfg.batch, cfg.crop, gen, warp, cfg.p_denoised, cfg.p_band_mix)
        loss, terms = prefilter_step(model, batch, cfg, gen, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % cfg.log_every == 0 or step == 1:
            rec = {"step": step, "time_s": round(elapsed, 1), "lr": opt.param_groups[0]["lr"], **terms}
            emit(rec)
            history.append(rec)
            log(f"step {step:6d} {elapsed:7.1f}s loss {terms['loss']:.3f} | template peak within 1 px "
                f"{terms['tm_acc']:.2f}")
        if step % cfg.val_every == 0:
            v = validate()
            emit({"event": "val", "step": step, **v})
            log(f"  val step {step}: pck1 {v['pck1']:.3f} pck2 {v['pck2']:.3f} median {v['median_px']:.2f} px "
                f"(CFOG pck1 {cfog_val['pck1']:.3f})")
            if v["pck1"] > best:
                best = v["pck1"]
                save_prefilter(model, out / "prefilter_best.safetensors", {"step": step, "val_pck1": best})
        if step % cfg.ckpt_every == 0:
            _save_ckpt(ckpt, model, opt, step, gen, elapsed0 + time.perf_counter() - t0, best)
    elapsed = elapsed0 + time.perf_counter() - t0
    final_val = validate()
    emit({"event": "val", "step": step, "final": True, **final_val})
    if final_val["pck1"] > best:
        best = final_val["pck1"]
        save_prefilter(model, out / "prefilter_best.safetensors", {"step": step, "val_pck1": best})
    _save_ckpt(ckpt, model, opt, step, gen, elapsed, best)
    final = out / "prefilter.safetensors"
    digest = save_prefilter(model, final, {"step": step, "val_pck1": final_val["pck1"]})
    best_file = out / "prefilter_best.safetensors"
    summary = {
        "name": cfg.name, "version": cfg.version, "model": "prefilter", "steps": step, "seconds": round(elapsed, 1),
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "torch": torch.__version__, "parameters": model.n_parameters(),
        "train_pairs": len(train_set), "val_pairs": len(val_set),
        "train_sources": sorted(set(train_set.sources.tolist())), "val_keys": sorted(set(val_set.keys.tolist())),
        "excluded_keys": list(cfg.exclude_keys),
        "first_log": history[0] if history else None, "last_log": history[-1] if history else None,
        "val_final": final_val, "val_best_pck1": best, "cfog_val": cfog_val,
        "weights": final.name, "sha256": digest,
        "best_weights": best_file.name if best_file.is_file() else None,
        "best_sha256": sha256(best_file) if best_file.is_file() else None,
        "config": cfg.to_dict(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logf.close()
    log(f"done: {step} steps in {elapsed:.0f} s; held-out pck1 {final_val['pck1']:.3f} (best {best:.3f}), "
        f"CFOG {cfog_val['pck1']:.3f}; weights {final} sha256 {digest[:12]}")
    return summary
