"""The training loop: seeded, checkpointed, resumable, logged per loss term, validated on held-out pairs.

Outputs in ``out_dir``: ``train_log.jsonl`` (one JSON object per logged step and per validation),
``ckpt.pt`` (model + optimiser + RNG state; loaded with ``weights_only=True``), ``hsscl.safetensors``
(final weights), ``hsscl_best.safetensors`` (best held-out PCK@1) and ``summary.json``.
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..descriptors.cfog import CFOG
from ..descriptors.hsscl import HSSCLDescriptor
from ..descriptors.hybrid import HybridDescriptor
from ..network.model import LEVELS, HSSCLNet, NetConfig
from ..network.registry import save_weights, sha256
from ..network.stems import UNKNOWN
from .augment import augment
from .config import TrainConfig
from .data import PairCache, WarpRange
from .losses import coral, info_nce, mine_shift, template_loss
from .validate import fixed_shift_batches, shift_pck


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def step_losses(model: HSSCLNet, batch, cfg: TrainConfig, gen: torch.Generator, device: torch.device,
                augment_inputs: bool = True, mining: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """All loss terms of one batch. Returns the total and the logged terms."""
    B = batch.a.shape[0]
    mod_a, mod_b = batch.mod_a.to(device), batch.mod_b.to(device)
    if augment_inputs:
        a = augment(batch.a, batch.va, mod_a, gen)
        b = augment(batch.b, batch.vb, mod_b, gen)
        drop = (torch.rand(2, B, generator=gen) < cfg.p_modality_dropout).to(device)
        mod_a = torch.where(drop[0], torch.full_like(mod_a, UNKNOWN), mod_a)
        mod_b = torch.where(drop[1], torch.full_like(mod_b, UNKNOWN), mod_b)
    else:
        a, b = batch.a * batch.va, batch.b * batch.vb
    use_amp = cfg.amp and device.type == "cuda"
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        fa = model(a, mod_a)
        fb = model(b, mod_b)
    fa = {k: v.float() for k, v in fa.items()}
    fb = {k: v.float() for k, v in fb.items()}
    terms: dict[str, float] = {}
    shift = None
    if mining:
        shift, acc = mine_shift(fa["fine"], fb["fine"], batch.va, batch.vb, batch.H, 2, gen,
                                max_shift=cfg.mining_max_shift_px)
        terms["mined_rate"] = float(acc.float().mean())
        terms["mined_shift_px"] = float(shift[acc].norm(dim=1).mean()) if bool(acc.any()) else 0.0
    total = fa["fine"].new_zeros(())
    coral_total = fa["fine"].new_zeros(())
    strides = model.config.strides
    for i, lv in enumerate(LEVELS):
        loss, st = info_nce(fa[lv], fb[lv], batch.va, batch.vb, batch.H, strides[lv], cfg.points[i], cfg.tau,
                            cfg.exclusion_px[i], gen, shift if lv == "fine" or lv == "mid" else None)
        total = total + cfg.nce_weight * cfg.level_weights[i] * loss
        terms[f"nce_{lv}"] = float(loss.detach())
        terms[f"acc_{lv}"] = st["acc"]
        if cfg.coral_weight > 0:  # per level (levels may differ in width), sensor/source as domain label
            ok = st["ok"]
            doms = [batch.dom_a.to(device)[:, None].expand_as(ok)[ok], batch.dom_b.to(device)[:, None].expand_as(ok)[ok]]
            coral_total = coral_total + coral(list(st["feats"]), doms)
    if cfg.coral_weight > 0:
        total = total + cfg.coral_weight * coral_total
        terms["coral"] = float(coral_total.detach())
    if cfg.tm_weight > 0 or cfg.tm_hybrid_weight > 0:
        size = tuple(a.shape[-2:])
        tm = dict(template=cfg.tm_template, radius=cfg.tm_radius, n=cfg.tm_n, scale=cfg.tm_scale,
                  label_sigma=cfg.tm_label_sigma)
        if cfg.tm_weight > 0:
            loss, st = template_loss(model.dense(fa, size), batch.va, model.dense(fb, size), batch.vb, batch.H,
                                     gen, **tm)
            total = total + cfg.tm_weight * loss
            terms["tm_net"], terms["tm_acc_net"] = float(loss.detach()), st["acc"]
        if cfg.tm_hybrid_weight > 0:
            cfog = CFOG()
            fine_only = (1.0, 0.0, 0.0)
            ha = torch.cat([cfog(a, batch.va), cfg.hybrid_weight * model.dense(fa, size, fine_only)], 1)
            hb = torch.cat([cfog(b, batch.vb), cfg.hybrid_weight * model.dense(fb, size, fine_only)], 1)
            loss, st = template_loss(ha, batch.va, hb, batch.vb, batch.H, gen, **tm)
            total = total + cfg.tm_hybrid_weight * loss
            terms["tm_hyb"], terms["tm_acc_hyb"] = float(loss.detach()), st["acc"]
    terms["loss"] = float(total.detach())
    return total, terms


def _save_ckpt(path: Path, model, opt, step: int, gen: torch.Generator, elapsed: float, best: float) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": torch.tensor(step),
                "gen": gen.get_state(), "elapsed": torch.tensor(elapsed), "best": torch.tensor(best)}, tmp)
    os.replace(tmp, path)


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the network as ``cfg`` says; write the outputs listed in the module doc; return the summary."""
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
        from ..network.registry import load_weights

        model = load_weights(cfg.init_weights, device=device)
        log(f"starting from {cfg.init_weights}")
    else:
        model = HSSCLNet(NetConfig.from_dict(cfg.net)).to(device)
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

    log(f"device {device}; {model.n_parameters():,} parameters; {len(train_set)} train / {len(val_set)} held-out "
        f"pairs; sources {sorted(set(train_set.sources))}")
    vb = fixed_shift_batches(val_set, cfg.val_batches, 16, cfg.crop)
    vwarp = [val_set.sample(16, cfg.crop, torch.Generator().manual_seed(99 + i), warp, 1.0, 0.0)
             for i in range(cfg.val_batches)]
    if cfg.select_on not in ("net", "hybrid"):
        raise ValueError(f"select_on must be 'net' or 'hybrid', got {cfg.select_on!r}")
    cfog_val = shift_pck(CFOG(), vb, device=device)
    emit({"event": "baseline", "cfog": cfog_val})
    log(f"held-out shift PCK, CFOG baseline: pck1 {cfog_val['pck1']:.3f} pck2 {cfog_val['pck2']:.3f} "
        f"median {cfog_val['median_px']:.2f} px (n={cfog_val['n']})")

    def validate() -> dict:
        model.eval()
        with torch.no_grad():
            vl = [step_losses(model, b, cfg, torch.Generator().manual_seed(7), device, augment_inputs=False)[1]
                  for b in vwarp]
            res = shift_pck(HSSCLDescriptor(model, device), vb, device=device)
            hyb = shift_pck(HybridDescriptor(HSSCLDescriptor(model, device, levels=("fine",)), cfg.hybrid_weight),
                            vb, device=device)
        model.train()
        res.update({k: sum(v[k] for v in vl) / len(vl) for k in vl[0]})
        res.update({"net_pck1": res["pck1"], "hybrid_pck1": hyb["pck1"], "hybrid_pck2": hyb["pck2"],
                    "hybrid_median_px": hyb["median_px"]})
        res["select"] = res["hybrid_pck1"] if cfg.select_on == "hybrid" else res["pck1"]
        return res

    t0 = time.perf_counter()
    last_val: dict = {}
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
        loss, terms = step_losses(model, batch, cfg, gen, device, mining=progress >= cfg.mining_start)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if step % cfg.log_every == 0 or step == 1:
            rec = {"step": step, "time_s": round(elapsed, 1), "lr": opt.param_groups[0]["lr"], **terms}
            emit(rec)
            history.append(rec)
            log(f"step {step:6d} {elapsed:7.1f}s loss {terms['loss']:.3f} | nce f/m/c {terms['nce_fine']:.3f} "
                f"{terms['nce_mid']:.3f} {terms['nce_coarse']:.3f} | acc f/m/c {terms['acc_fine']:.2f} "
                f"{terms['acc_mid']:.2f} {terms['acc_coarse']:.2f} | coral {terms.get('coral', 0):.4f}"
                + (f" | mined {terms['mined_rate']:.2f} ({terms['mined_shift_px']:.2f} px)" if "mined_rate" in terms else "")
                + (f" | tm net {terms['tm_net']:.3f} ({terms['tm_acc_net']:.2f})" if "tm_net" in terms else "")
                + (f" | tm hybrid {terms['tm_hyb']:.3f} ({terms['tm_acc_hyb']:.2f})" if "tm_hyb" in terms else ""))
        if step % cfg.val_every == 0:
            last_val = validate()
            emit({"event": "val", "step": step, **last_val})
            log(f"  val step {step}: pck1 {last_val['pck1']:.3f} pck2 {last_val['pck2']:.3f} median "
                f"{last_val['median_px']:.2f} px | hybrid pck1 {last_val['hybrid_pck1']:.3f} | val loss "
                f"{last_val['loss']:.3f} (CFOG pck1 {cfog_val['pck1']:.3f})")
            if last_val["select"] > best:
                best = last_val["select"]
                save_weights(model, out / "hsscl_best.safetensors", {"step": step, "val_select": best})
        if step % cfg.ckpt_every == 0:
            _save_ckpt(ckpt, model, opt, step, gen, elapsed0 + time.perf_counter() - t0, best)
    elapsed = elapsed0 + time.perf_counter() - t0
    final_val = validate()
    emit({"event": "val", "step": step, "final": True, **final_val})
    if final_val["select"] > best:
        best = final_val["select"]
        save_weights(model, out / "hsscl_best.safetensors", {"step": step, "val_select": best})
    _save_ckpt(ckpt, model, opt, step, gen, elapsed, best)
    final = out / "hsscl.safetensors"
    digest = save_weights(model, final, {"step": step, "val_pck1": final_val["pck1"]})
    summary = {
        "name": cfg.name, "version": cfg.version, "steps": step, "seconds": round(elapsed, 1),
        "device": str(device) + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "torch": torch.__version__, "parameters": model.n_parameters(),
        "train_pairs": len(train_set), "val_pairs": len(val_set),
        "train_sources": sorted(set(train_set.sources.tolist())), "val_keys": sorted(set(val_set.keys.tolist())),
        "first_log": history[0] if history else None, "last_log": history[-1] if history else None,
        "val_final": final_val, "val_best_pck1": best, "cfog_val": cfog_val,
        "weights": final.name, "sha256": digest,
        "best_weights": "hsscl_best.safetensors" if (out / "hsscl_best.safetensors").is_file() else None,
        "best_sha256": sha256(out / "hsscl_best.safetensors") if (out / "hsscl_best.safetensors").is_file() else None,
        "config": cfg.to_dict(),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    logf.close()
    log(f"done: {step} steps in {elapsed:.0f} s; held-out pck1 {final_val['pck1']:.3f} (best {best:.3f}), "
        f"CFOG {cfog_val['pck1']:.3f}; weights {final} sha256 {digest[:12]}")
    return summary



