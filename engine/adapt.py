"""On-the-fly adaptation of the HSSCL network to one pair (``CoregConfig.adapt``, ``--adapt``).

1. **First match** with the configured descriptor: CFOG (``auto``/``cfog``), the network (``hsscl``,
   ``hsscl-<level>``) or the hybrid (``hybrid``: CFOG beside ``weight`` x the network's fine level).
2. **Normalisation statistics** of a deep copy of the network (weights on disk are never touched):
   the hybrid's own network, the network descriptor's, or for CFOG the registry's default (or
   ``config.weights``); its BatchNorm running statistics are re-estimated on tiles of the two images
   (AdaBN). The images themselves are already robustly standardised per image by
   :func:`engine.preprocess.prepare`.
3. **Self-supervised steps** on the pair (bounded by steps and by ``config.adapt_budget_s``):
   pseudo-positives are the pass-2 inliers of the first match; the affine fitted to them gives dense
   correspondences within ``trust_radius_px`` of an inlier (the moving image is resampled into the
   reference frame through that affine, so crops of the two line up). Loss: multi-level InfoNCE with
   an exclusion radius (:func:`engine.train.losses.info_nce`) plus CORAL between the two images'
   descriptors (:func:`engine.train.losses.coral`). For the hybrid, plus ``tm_weight`` x the loss it is
   trained with (:func:`engine.train.losses.template_loss`, as in ``engine.train.loop.step_losses``): the
   hybrid field of the two crops (CFOG beside ``weight`` x the fine level) through the matcher's ZNCC
   over shifts, softmax onto the true shift (0: the crops are aligned by the first match's affine).
4. **Second match** with the adapted network, as the same kind of descriptor as the first match (the
   hybrid with the same weight and levels, the network with the same levels; after CFOG the network).
5. **Guard**: the adapted result is kept only when its verified-match evidence (:func:`evidence`, built
   from geometric counts that mean the same for any descriptor) beats the first match's by
   ``min_gain`` (``min_gain_switch`` after CFOG), keeps most of its pass-2 inliers and agrees with its
   alignment, and (after CFOG or the hybrid) is not less precise (pass-2 affine RMSE); otherwise the
   first result is returned unchanged.

When the first match fails there are no pseudo-positives and nothing is adapted: the first error is
raised with a note in its details. (Feature alignment alone, with nothing holding the descriptors
apart, can collapse them; and a re-match with only refreshed normalisation statistics, tried on the dev
cases, passed the matcher's checks once with a false alignment, 11.5 px off.)

The budget covers steps 2-4 (the second match is reserved from the first match's time, x ``rematch_factor``
after CFOG); the step count is fixed (``max_steps``), so a run is deterministic with the seed unless the time budget cuts it.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import HSSCLError, NotEnoughMatchesError
from .geometry.transforms import fit_model
from .matching.fine import warp_to_reference
from .matching.matcher import MatchResult, MatchSettings, match_pair
from .network.model import LEVELS
from .train.losses import coral, info_nce, template_loss


@dataclass(frozen=True)
class AdaptSettings:
    max_steps: int = 30
    crop: int = 160                  # training crop side (px), multiple of 16
    batch: int = 2
    lr: float = 1e-3
    tau: float = 0.07
    points: tuple[int, int, int] = (128, 64, 32)           # positions per crop: fine, mid, coarse
    level_weights: tuple[float, float, float] = (1.0, 1.0, 0.5)
    exclusion_px: tuple[float, float, float] = (4.0, 12.0, 24.0)
    coral_weight: float = 0.5
    # hybrid only: the template-matching loss on the hybrid field (engine/train/losses.py template_loss)
    tm_weight: float = 1.0
    tm_template: int = 32            # template side (px); needs crop >= template + 2 x radius + 1
    tm_radius: int = 8               # shifts searched (px)
    tm_n: int = 4                    # template positions per step
    tm_scale: float = 20.0           # softmax logits = scale x ZNCC
    trust_radius_px: float = 40.0    # dense correspondences this close to a pseudo-positive
    max_residual_px: float = 1.5     # inliers farther than this from the affine are not pseudo-positives
    min_pseudo: int = 12
    min_first_confidence: float = 0.3  # pseudo-positives need a first alignment the verify stage believes in
    norm_tile: int = 512             # tiles for the normalisation statistics
    norm_tiles: int = 4              # per image
    rematch_factor: float = 2.0      # a network (or hybrid) match takes about this many times a CFOG match
    min_gain: float = 0.03           # evidence score the adapted match must gain to be kept
    min_gain_switch: float = 0.1     # ... when the first match used another descriptor (CFOG, the default),
                                     # which it must also match in precision (pass-2 affine RMSE; checked
                                     # after the hybrid too)
    min_inlier_share: float = 0.8    # ... keeping this share of the first match's pass-2 inliers
    max_disagreement_px: float = 3.0  # ... and aligning within this of the first match


DEFAULT = AdaptSettings()


def evidence(diag: dict[str, Any]) -> dict[str, Any]:
    """Verified-match evidence from :func:`match_pair` diagnostics, comparable across descriptors.

    Only geometric counts are used (ZNCC peak values differ between descriptors): the pass-1 inlier
    ratio's margin over the decoy control, the pass-2 inlier ratio and the pass-2 affine RMSE (px).
    ``score = margin + pass2_ratio - 0.2 * min(rmse, 2.5)``.
    """
    p1, p2 = diag["pass1"], diag["pass2"]
    margin = float(p1["inlier_ratio"]) - float(diag["decoy_inlier_ratio"])
    rmse = float(p2["affine_rmse"])
    score = margin + float(p2["inlier_ratio"]) - 0.2 * min(rmse, 2.5)
    return {"pass1_inliers": int(p1["inliers"]), "pass1_ratio": float(p1["inlier_ratio"]),
            "decoy_ratio": float(diag["decoy_inlier_ratio"]), "pass2_inliers": int(p2["inliers"]),
            "pass2_ratio": float(p2["inlier_ratio"]), "affine_rmse_px": round(rmse, 3), "score": round(score, 3)}


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _tiles(img: torch.Tensor, valid: torch.Tensor, size: int, count: int) -> torch.Tensor:
    """Up to ``count`` mostly valid square tiles (multiple of 16) of ``img * valid``: (n, 1, s, s)."""
    H, W = img.shape[-2:]
    s = max(16, min(size, H, W) // 16 * 16)
    x = img * valid
    if min(H, W) < 16:
        return F.pad(x, (0, (-W) % 16, 0, (-H) % 16), mode="replicate")
    ys = np.linspace(0, H - s, max(1, int(np.ceil(H / s)))).astype(int)
    xs = np.linspace(0, W - s, max(1, int(np.ceil(W / s)))).astype(int)
    cand = [(float(valid[..., y:y + s, x0:x0 + s].float().mean()), y, x0) for y in ys for x0 in xs]
    cand.sort(key=lambda c: -c[0])
    keep = [c for c in cand if c[0] >= 0.9][:count] or cand[:1]
    return torch.cat([x[..., y:y + s, x0:x0 + s] for _, y, x0 in keep])


def refresh_norm_stats(model: nn.Module, images: list[tuple[torch.Tensor, torch.Tensor]], s: AdaptSettings
                       ) -> str:
    """Re-estimate BatchNorm running statistics on tiles of each image (one forward pass per image, so equal
    weight per image): torch's ``update_bn`` (reset, cumulative average, momenta restored); eval mode after."""
    bns = _batchnorms(model)
    batches = [_tiles(img, valid, s.norm_tile, s.norm_tiles) for img, valid in images]
    try:
        torch.optim.swa_utils.update_bn(batches, model)
    finally:
        model.eval()
    n = sum(len(x) for x in batches)
    if not bns:
        return "the network has no normalisation statistics to refresh"
    return f"BatchNorm statistics of {len(bns)} layers re-estimated on {n} tiles of the two images"


def _trust_mask(pts: np.ndarray, H: int, W: int, radius: float) -> torch.Tensor:
    """(1, 1, H, W) bool: pixels within ``radius`` (square, on an 8 px grid) of one of ``pts``."""
    c = 8
    h, w = -(-H // c), -(-W // c)
    g = torch.zeros(1, 1, h, w)
    ix = np.clip((pts[:, 0] // c).astype(int), 0, w - 1)
    iy = np.clip((pts[:, 1] // c).astype(int), 0, h - 1)
    g[0, 0, iy, ix] = 1.0
    r = max(1, int(round(radius / c)))
    g = F.max_pool2d(g, 2 * r + 1, stride=1, padding=r)
    return F.interpolate(g, scale_factor=c, mode="nearest")[..., :H, :W] > 0


def _tm_fits(S: int, s: AdaptSettings) -> bool:
    return S >= s.tm_template + 2 * s.tm_radius + 1


def _loss(model, a, b, va, vb, s: AdaptSettings, gen: torch.Generator, hybrid_weight: float | None = None,
          image_valid: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The adaptation loss of aligned crops ``a``, ``b`` (B, 1, S, S); ``va`` / ``vb`` (B, 1, S, S) bool: where
    positions are drawn (``va``: valid and trusted). ``hybrid_weight``: add the template-matching term on the
    hybrid field (CFOG of the crops, masked by ``image_valid``, beside ``hybrid_weight`` x the fine level).
    Returns the total and the terms (``nce``, ``coral``, ``acc``; ``tm_hybrid``, ``tm_acc`` for the hybrid)."""
    fa, fb = model(a), model(b)
    eye = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]], device=a.device).expand(a.shape[0], 2, 3)
    nce = a.new_zeros(())
    cor = a.new_zeros(())
    acc = 0.0
    strides = model.config.strides
    for i, lv in enumerate(LEVELS):
        loss, st = info_nce(fa[lv], fb[lv], va, vb, eye, strides[lv], s.points[i], s.tau, s.exclusion_px[i], gen)
        nce = nce + s.level_weights[i] * loss
        acc += st["acc"] / len(LEVELS)
        if s.coral_weight > 0 and st["n"] > 0:
            xa, xb = st["feats"]
            doms = [torch.zeros(len(xa), dtype=torch.long), torch.ones(len(xb), dtype=torch.long)]
            cor = cor + coral([xa, xb], [d.to(xa.device) for d in doms])
    total = nce + s.coral_weight * cor
    terms = {"nce": float(nce.detach()), "coral": float(cor.detach()), "acc": acc}
    if hybrid_weight is not None and s.tm_weight > 0 and _tm_fits(a.shape[-1], s):
        from .descriptors.cfog import CFOG

        # the hybrid field exactly as engine/train/loop.py step_losses builds it (tm_hybrid_weight)
        cfog = CFOG()
        size = tuple(a.shape[-2:])
        fine_only = (1.0, 0.0, 0.0)
        ia, ib = image_valid if image_valid is not None else (va, vb)
        ha = torch.cat([cfog(a, ia), hybrid_weight * model.dense(fa, size, fine_only)], 1)
        hb = torch.cat([cfog(b, ib), hybrid_weight * model.dense(fb, size, fine_only)], 1)
        loss, st = template_loss(ha, va, hb, vb, eye, gen, template=s.tm_template, radius=s.tm_radius, n=s.tm_n,
                                 scale=s.tm_scale)
        total = total + s.tm_weight * loss
        terms.update(tm_hybrid=float(loss.detach()), tm_acc=st["acc"])
    return total, terms


def _affine(res: MatchResult):
    keep = res.inlier
    return fit_model("affine", res.matches.ref_xy[keep], res.matches.mov_xy[keep])


def _disagreement(res0: MatchResult, res1: MatchResult) -> float:
    """RMS distance (moving px) between the two results' affines at the first result's verified tie points."""
    g = res0.matches.ref_xy[res0.inlier]
    return float(np.sqrt(np.mean(np.sum((_affine(res0)(g) - _affine(res1)(g)) ** 2, axis=1))))


def _network(descriptor, config, device):
    """The network to adapt (not copied here) and its info: the hybrid's own, the network descriptor's, or
    after another descriptor (CFOG) the registry's default / ``config.weights``."""
    from .descriptors.hsscl import HSSCLDescriptor
    from .descriptors.hybrid import HybridDescriptor

    if isinstance(descriptor, HybridDescriptor):
        return descriptor.network.model, descriptor.network.info
    if isinstance(descriptor, HSSCLDescriptor):
        return descriptor.model, descriptor.info
    d = HSSCLDescriptor.from_weights(config.weights, str(device))
    return d.model, d.info


def _adapted_descriptor(descriptor, model, device, info: dict):
    """The adapted network as the same kind of descriptor as the first match (hybrid: same weight and levels;
    network: same levels and modality; after CFOG: the network, all levels)."""
    from .descriptors.hsscl import HSSCLDescriptor
    from .descriptors.hybrid import HybridDescriptor

    info = {**info, "adapted": True}
    if isinstance(descriptor, HybridDescriptor):
        net = descriptor.network
        return HybridDescriptor(HSSCLDescriptor(model, device, modality=net.modality, info=info, levels=net.levels),
                                weight=descriptor.weight, cfog=descriptor.cfog)
    if isinstance(descriptor, HSSCLDescriptor):
        return HSSCLDescriptor(model, device, modality=descriptor.modality, info=info, levels=descriptor.levels)
    return HSSCLDescriptor(model, device, info=info)


def match_adapted(ref: torch.Tensor, ref_valid: torch.Tensor, mov: torch.Tensor, mov_valid: torch.Tensor,
                  descriptor, settings: MatchSettings, config, device, monitor,
                  adapt: AdaptSettings | None = None):
    """Match, adapting the network to the pair when ``config.adapt`` (see the module doc).

    Shapes as :func:`match_pair`. Returns ``(result, descriptor used, report entry or None)``.
    """
    if not config.adapt:
        return match_pair(ref, ref_valid, mov, mov_valid, descriptor, settings, monitor=monitor), descriptor, None
    from .descriptors.hsscl import HSSCLDescriptor
    from .descriptors.hybrid import HybridDescriptor

    s = adapt or DEFAULT
    mon = monitor
    first_name = getattr(descriptor, "name", str(descriptor))
    hybrid = isinstance(descriptor, HybridDescriptor)
    same_kind = hybrid or isinstance(descriptor, HSSCLDescriptor)  # re-match: the first's kind
    network = "hybrid (fine level)" if hybrid else (descriptor.name if isinstance(descriptor, HSSCLDescriptor)
                                                     else "hsscl")
    note: dict[str, Any] = {"kept": "original", "why": "", "first_descriptor": first_name, "network": network,
                            "budget_s": config.adapt_budget_s, "steps": 0, "max_steps": s.max_steps,
                            "seconds": 0.0, "evidence": {"before": None, "after": None}}
    first_error: NotEnoughMatchesError | None = None
    res0: MatchResult | None = None
    t_first = time.perf_counter()
    with mon.stage(0.0, 0.35, f"matching ({first_name})"):
        try:
            res0 = match_pair(ref, ref_valid, mov, mov_valid, descriptor, settings, monitor=mon)
        except NotEnoughMatchesError as err:
            first_error = err
    t0 = time.perf_counter()
    t_first = t0 - t_first
    budget = float(config.adapt_budget_s)
    if first_error is not None:
        first_error.details = (f"{first_error.details}\nOn-the-fly adaptation: the first match ({first_name}) found "
                               "no reliable alignment, so there are no pseudo-positives to adapt on; nothing was "
                               "adapted.").strip()
        mon.log("adaptation: the first match failed, so there are no pseudo-positives: nothing was adapted")
        raise first_error
    assert res0 is not None
    note["evidence"]["before"] = evidence(res0.diagnostics)
    if res0.confidence < s.min_first_confidence:
        note["why"] = (f"the first match ({first_name}) is not confident enough ({res0.confidence:.0%} < "
                       f"{s.min_first_confidence:.0%}) to give pseudo-positives: nothing was adapted; the original "
                       "result is kept")
        mon.log(f"adaptation: {note['why']}")
        return res0, descriptor, note
    # the second match costs about the first one (same kind), more when the first used the cheaper CFOG
    reserve = t_first * (1.0 if same_kind else s.rematch_factor)
    note["rematch_reserve_s"] = round(reserve, 2)
    if reserve >= budget:
        why = (f"the budget ({budget:g} s) is smaller than the time of a second match (about {reserve:.1f} s): "
               "no adaptation was tried")
        note["why"] = why + "; the original result is kept"
        mon.log(f"adaptation: {note['why']}")
        return res0, descriptor, note
    try:
        base, info = _network(descriptor, config, device)
    except HSSCLError as err:
        note["why"] = f"adaptation not possible: {err}"
        mon.log(note["why"])
        return res0, descriptor, note
    note["weights"] = info.get("weights")
    if hybrid:
        note["hybrid_weight"] = descriptor.weight
    model = copy.deepcopy(base).to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    H, W = ref.shape[-2:]

    with mon.stage(0.35, 0.4, "adaptation: normalisation statistics"):
        note["normalisation"] = refresh_norm_stats(model, [(ref, ref_valid), (mov, mov_valid)], s)

    # pseudo-positives: pass-2 inliers close to the affine, and dense correspondences around them
    aff = _affine(res0)
    keep = res0.inlier
    rxy, mxy = res0.matches.ref_xy[keep], res0.matches.mov_xy[keep]
    pts = rxy[np.linalg.norm(aff(rxy) - mxy, axis=1) <= s.max_residual_px]
    note["pseudo_positives"] = int(len(pts))
    if len(pts) < s.min_pseudo:
        note.update(why=f"too few confident verified matches to adapt on ({len(pts)} < {s.min_pseudo})",
                    seconds=round(time.perf_counter() - t0, 2))
        mon.log(f"adaptation: {note['why']}")
        return res0, descriptor, note
    if min(H, W) < 32:
        note.update(why="the images are too small to adapt on", seconds=round(time.perf_counter() - t0, 2))
        return res0, descriptor, note
    trust = _trust_mask(pts, H, W, s.trust_radius_px).to(ref.device) & ref_valid.bool()
    mw, mwv = warp_to_reference(mov, mov_valid, aff, H, W, 0)
    S = max(32, min(s.crop, H // 16 * 16, W // 16 * 16))
    hybrid_weight = descriptor.weight if hybrid else None  # adds the template-matching term
    if hybrid:
        note["template_loss"] = (f"weight {s.tm_weight:g}, template {s.tm_template} px, radius {s.tm_radius} px, "
                                 f"{s.tm_n} templates per step" if s.tm_weight > 0 and _tm_fits(S, s) else
                                 "off (tm_weight 0)" if s.tm_weight <= 0 else
                                 f"off (crop {S} px too small for the template)")

    rng = np.random.default_rng(config.seed)
    gen = torch.Generator().manual_seed(int(config.seed))
    torch.manual_seed(int(config.seed))
    model.train()
    for m in _batchnorms(model):
        m.eval()  # keep the refreshed statistics; tiny batches would make them noisy
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    losses: list[float] = []
    terms: list[dict[str, float]] = []
    stopped = "all steps done"
    step_s = 0.0
    with mon.stage(0.4, 0.7, "adaptation: self-supervised steps"):
        for step in range(s.max_steps):
            elapsed = time.perf_counter() - t0
            if elapsed + max(step_s, 0.0) + reserve > budget:
                stopped = "time budget"
                break
            mon.report(step / s.max_steps, f"adaptation: step {step + 1}/{s.max_steps}")
            t_step = time.perf_counter()
            c = pts[rng.integers(len(pts), size=s.batch)] + rng.uniform(-S / 4, S / 4, (s.batch, 2))
            x0 = np.clip(np.round(c[:, 0] - S / 2), 0, W - S).astype(int)
            y0 = np.clip(np.round(c[:, 1] - S / 2), 0, H - S).astype(int)

            def crops(x: torch.Tensor, xs=x0, ys=y0) -> torch.Tensor:
                return torch.cat([x[..., y:y + S, xx:xx + S] for xx, y in zip(xs, ys)])

            rv, mv = crops(ref_valid.bool()), crops(mwv)
            a, b = crops(ref.float()) * rv, crops(mw) * mv
            loss, st = _loss(model, a, b, crops(trust) & rv, mv, s, gen, hybrid_weight, (rv, mv))
            mon.check()
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            losses.append(float(loss.detach()))
            terms.append(st)
            step_s = time.perf_counter() - t_step
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    note.update(steps=len(losses), stopped=stopped)
    if losses:
        k = min(3, len(losses))

        def first_last(v: list[float], nd: int = 4) -> dict[str, float]:
            return {"first": round(float(np.mean(v[:k])), nd), "last": round(float(np.mean(v[-k:])), nd)}

        note["loss"] = first_last(losses)
        note["loss_terms"] = {t: first_last([x[t] for x in terms]) for t in ("nce", "coral", "tm_hybrid")
                              if all(t in x for x in terms)}
        note["positive_accuracy"] = first_last([x["acc"] for x in terms], 3)
        if all("tm_acc" in x for x in terms):
            note["template_accuracy"] = first_last([x["tm_acc"] for x in terms], 3)
    if not losses:
        note.update(why=f"the budget ({budget:g} s) leaves no time for an adaptation step and the second match "
                        f"(about {reserve:.1f} s): the original result is kept",
                    seconds=round(time.perf_counter() - t0, 2))
        mon.log(f"adaptation: {note['why']}")
        return res0, descriptor, note

    adapted = _adapted_descriptor(descriptor, model, device, info)
    note["adapted_descriptor"] = adapted.name
    with mon.stage(0.7, 1.0, f"matching (adapted {'hybrid' if hybrid else 'network'})"):
        try:
            res1 = match_pair(ref, ref_valid, mov, mov_valid, adapted, settings, monitor=mon)
        except NotEnoughMatchesError as err:
            res1 = None
            why = f"the adapted network found no reliable alignment ({err.message})"
    note["seconds"] = round(time.perf_counter() - t0, 2)
    if res1 is not None:
        # the verify stage judges both on one scale: the adapted match is kept only if it is more confident
        c0, c1 = res0.confidence, res1.confidence
        note["evidence"]["after"] = evidence(res1.diagnostics)
        note["confidence"] = {"before": round(c0, 4), "after": round(c1, 4)}
        note["disagreement_px"] = round(_disagreement(res0, res1), 3)
        if c1 > c0:
            note.update(kept="adapted", why=f"the adapted match's confidence ({c1:.1%}) is higher than the first "
                                            f"match's ({c0:.1%})")
            mon.log(f"adaptation: {note['why']}")
            return res1, adapted, note
        why = f"the adapted match's confidence ({c1:.1%}) is not higher than the first match's ({c0:.1%})"
    note["why"] = why + f"; the first match ({first_name}) is kept"
    mon.log(f"adaptation: {note['why']}")
    return res0, descriptor, note
