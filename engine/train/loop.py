"""Training of the HSSCL network: its losses per batch and its validation, on the shared run (:mod:`.runner`).

Outputs in ``out_dir``: ``train_log.jsonl`` (one JSON object per logged step and per validation),
``ckpt.pt`` (model + optimiser + RNG state; loaded with ``weights_only=True``), ``hsscl.safetensors``
(final weights), ``hsscl_best.safetensors`` (best held-out PCK@1 of the network, or of the hybrid with
``select_on: hybrid``) and ``summary.json``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from ..descriptors.cfog import CFOG
from ..descriptors.hsscl import HSSCLDescriptor
from ..descriptors.hybrid import HybridDescriptor
from ..network.model import LEVELS, HSSCLNet, NetConfig
from ..network.registry import load_weights, save_weights
from ..network.stems import UNKNOWN
from .augment import augment
from .config import TrainConfig
from .losses import coral, info_nce, mine_shift, template_loss
from .runner import Hooks, Setup, open_log, run
from .validate import fixed_shift_batches, shift_pck


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
        size = (int(a.shape[-2]), int(a.shape[-1]))

        def tm_loss(da: torch.Tensor, db: torch.Tensor) -> tuple[torch.Tensor, dict]:
            return template_loss(da, batch.va, db, batch.vb, batch.H, gen, template=cfg.tm_template,
                                 radius=cfg.tm_radius, n=cfg.tm_n, scale=cfg.tm_scale,
                                 label_sigma=cfg.tm_label_sigma)

        if cfg.tm_weight > 0:
            loss, st = tm_loss(model.dense(fa, size), model.dense(fb, size))
            total = total + cfg.tm_weight * loss
            terms["tm_net"], terms["tm_acc_net"] = float(loss.detach()), st["acc"]
        if cfg.tm_hybrid_weight > 0:
            cfog = CFOG()
            fine_only = (1.0, 0.0, 0.0)
            ha = torch.cat([cfog(a, batch.va), cfg.hybrid_weight * model.dense(fa, size, fine_only)], 1)
            hb = torch.cat([cfog(b, batch.vb), cfg.hybrid_weight * model.dense(fb, size, fine_only)], 1)
            loss, st = tm_loss(ha, hb)
            total = total + cfg.tm_hybrid_weight * loss
            terms["tm_hyb"], terms["tm_acc_hyb"] = float(loss.detach()), st["acc"]
    terms["loss"] = float(total.detach())
    return total, terms


def _describe_step(terms: dict[str, float]) -> str:
    return (f"loss {terms['loss']:.3f} | nce f/m/c {terms['nce_fine']:.3f} {terms['nce_mid']:.3f} "
            f"{terms['nce_coarse']:.3f} | acc f/m/c {terms['acc_fine']:.2f} {terms['acc_mid']:.2f} "
            f"{terms['acc_coarse']:.2f} | coral {terms.get('coral', 0):.4f}"
            + (f" | mined {terms['mined_rate']:.2f} ({terms['mined_shift_px']:.2f} px)" if "mined_rate" in terms else "")
            + (f" | tm net {terms['tm_net']:.3f} ({terms['tm_acc_net']:.2f})" if "tm_net" in terms else "")
            + (f" | tm hybrid {terms['tm_hyb']:.3f} ({terms['tm_acc_hyb']:.2f})" if "tm_hyb" in terms else ""))


def warped_val_batches(setup: Setup) -> list:
    """The fixed warped crops of the validation locations that the validation loss terms are computed on."""
    return [setup.val_set.sample(16, setup.cfg.crop, torch.Generator().manual_seed(99 + i), setup.warp, 1.0, 0.0)
            for i in range(setup.cfg.val_batches)]


def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the network as ``cfg`` says; write the outputs listed in the module doc; return the summary."""
    if cfg.select_on not in ("net", "hybrid"):
        raise ValueError(f"select_on must be 'net' or 'hybrid', got {cfg.select_on!r}")
    setup = Setup.create(cfg, out_dir)
    device, val_set = setup.device, setup.val_set
    if cfg.init_weights:
        model = load_weights(cfg.init_weights, device=device)
        log(f"starting from {cfg.init_weights}")
    else:
        model = HSSCLNet(NetConfig.from_dict(cfg.net)).to(device)
    if cfg.dense_weights is not None:
        if len(cfg.dense_weights) != 3:
            raise ValueError(f"dense_weights takes three numbers (fine, mid, coarse), got {cfg.dense_weights!r}")
        fine, mid, coarse = (float(w) for w in cfg.dense_weights)
        model.config = dataclasses.replace(model.config, weights=(fine, mid, coarse))
        log(f"dense map level weights (fine, mid, coarse): {model.config.weights}")
    emit, close = open_log(setup.out)
    log(f"device {device}; {model.n_parameters():,} parameters; {len(setup.train_set)} train / {len(val_set)} "
        f"held-out pairs; sources {sorted(set(setup.train_set.sources))}")
    vb = fixed_shift_batches(val_set, cfg.val_batches, 16, cfg.crop)
    vwarp = warped_val_batches(setup)
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

    def describe_val(v: dict) -> str:
        return (f"pck1 {v['pck1']:.3f} pck2 {v['pck2']:.3f} median {v['median_px']:.2f} px | hybrid pck1 "
                f"{v['hybrid_pck1']:.3f} | val loss {v['loss']:.3f} (CFOG pck1 {cfog_val['pck1']:.3f})")

    hooks = Hooks(
        step=lambda batch, progress: step_losses(model, batch, cfg, setup.gen, device,
                                                 mining=progress >= cfg.mining_start),
        validate=validate,
        save=lambda m, path, meta: save_weights(cast(HSSCLNet, m), path, meta),  # run() passes our model
        describe_step=_describe_step, describe_val=describe_val)
    try:
        return run(setup, model, hooks, "hsscl", cfog_val, resume, log, emit, {})
    finally:
        close()
