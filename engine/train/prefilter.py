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

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from ..descriptors.cfog import CFOG
from ..descriptors.learned_cfog import LearnedCFOG
from ..network.prefilter import PreFilter, PreFilterConfig, load_prefilter, save_prefilter
from .augment import augment
from .config import TrainConfig
from .losses import template_loss
from .runner import Hooks, Setup, open_log, run
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
    setup = Setup.create(cfg, out_dir)
    device, train_set, val_set = setup.device, setup.train_set, setup.val_set
    if cfg.init_weights:
        model = load_prefilter(cfg.init_weights, device=device)
        log(f"starting from {cfg.init_weights}")
    else:
        model = PreFilter(PreFilterConfig.from_dict(cfg.prefilter)).to(device)
    emit, close = open_log(setup.out)
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
        return {**res, "select": res["pck1"]}

    hooks = Hooks(
        step=lambda batch, progress: prefilter_step(model, batch, cfg, setup.gen, device),
        validate=validate,
        save=lambda m, path, meta: save_prefilter(cast(PreFilter, m), path, meta),  # run() passes our model
        describe_step=lambda t: f"loss {t['loss']:.3f} | template peak within 1 px {t['tm_acc']:.2f}",
        describe_val=lambda v: (f"pck1 {v['pck1']:.3f} pck2 {v['pck2']:.3f} median {v['median_px']:.2f} px "
                                f"(CFOG pck1 {cfog_val['pck1']:.3f})"))
    try:
        return run(setup, model, hooks, "prefilter", cfog_val, resume, log, emit, {})
    finally:
        close()
