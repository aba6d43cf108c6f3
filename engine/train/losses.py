"""Losses: multi-level InfoNCE over co-located positions, CORAL feature alignment, mined positives.

InfoNCE (per level): positions ``q`` are drawn on the level's grid of crop ``a`` (valid, and landing on
valid pixels of ``b`` at ``p = H q``); the positive is ``b``'s descriptor sampled (bilinear) at ``p``.
Negatives are every position of ``b``'s dense map of the same sample farther than ``exclusion`` px from
``p`` (the hard, spatial negatives that matching must reject) plus the positives of the other samples
in the batch. The loss is symmetric (a -> b and b -> a).

Shapes: descriptor maps (B, C, h, w), L2-normalised; H (B, 2, 3); masks (B, 1, S, S) bool.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def level_centres(h: int, w: int, stride: int, device) -> torch.Tensor:
    """Pixel coordinates (x, y) of a level's grid: (h*w, 2), ``(j + 0.5) * stride``."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([(xs.reshape(-1) + 0.5) * stride, (ys.reshape(-1) + 0.5) * stride], -1)


def sample_at(x: torch.Tensor, xy: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear samples of ``x`` (B, C, h, w) covering an image of ``size`` (S_h, S_w) px at ``xy`` (B, N, 2)
    -> (B, N, C)."""
    g = torch.stack([2 * xy[..., 0] / size[1] - 1, 2 * xy[..., 1] / size[0] - 1], -1)[:, :, None]
    return F.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=False)[..., 0].transpose(1, 2)


def apply_h(H: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """(B, 2, 3) affine on (B, N, 2) points."""
    return torch.einsum("bij,bnj->bni", H[:, :, :2], xy) + H[:, None, :, 2]


def draw_positions(va: torch.Tensor, vb: torch.Tensor, H: torch.Tensor, stride: int, n: int,
                   gen: torch.Generator, shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` grid positions per sample in ``a`` (level ``stride``) with their GT positions in ``b``.

    Returns q (B, n, 2), p (B, n, 2) and ok (B, n) bool (both ends valid). ``shift`` (B, 2): a
    correction added to ``p`` (mined pair misregistration).
    """
    B, _, S, S2 = va.shape
    h, w = S // stride, S2 // stride
    cen = level_centres(h, w, stride, va.device)                        # (hw, 2)
    idx = torch.stack([torch.randperm(h * w, generator=gen)[:n] for _ in range(B)]).to(va.device)
    q = cen[idx]                                                       # (B, n, 2)
    p = apply_h(H, q)
    if shift is not None:
        p = p + shift[:, None, :]
    ok_a = sample_at(va.float(), q, (S, S2))[..., 0] > 0.99
    ok_b = sample_at(vb.float(), p, (S, S2))[..., 0] > 0.99
    inside = (p[..., 0] > stride / 2) & (p[..., 0] < S2 - stride / 2) & (p[..., 1] > stride / 2) & (p[..., 1] < S - stride / 2)
    return q, p, ok_a & ok_b & inside


def _one_way(anc: torch.Tensor, pos: torch.Tensor, dense: torch.Tensor, dense_valid: torch.Tensor,
             pos_xy: torch.Tensor, stride: int, ok: torch.Tensor, tau: float, exclusion: float) -> torch.Tensor:
    """anc, pos (B, n, C); dense (B, C, h, w) of the positive side, dense_valid (B, h*w) bool."""
    B, n, C = anc.shape
    h, w = dense.shape[-2:]
    pos_logit = (anc * pos).sum(-1, keepdim=True)                                    # (B, n, 1)
    dense_logit = torch.einsum("bnc,bck->bnk", anc, dense.flatten(2))                # (B, n, hw)
    cen = level_centres(h, w, stride, anc.device)
    far = torch.cdist(pos_xy, cen[None].expand(B, -1, -1)) > exclusion               # (B, n, hw)
    dense_logit = dense_logit.masked_fill(~(far & dense_valid[:, None, :]), float("-inf"))
    flat_pos = pos.reshape(B * n, C)
    cross = anc.reshape(B * n, C) @ flat_pos.t()                                     # (Bn, Bn)
    same = torch.arange(B, device=anc.device).repeat_interleave(n)
    cross_ok = (same[:, None] != same[None, :]) & ok.reshape(-1)[None, :]
    cross = cross.masked_fill(~cross_ok, float("-inf")).view(B, n, B * n)
    logits = torch.cat([pos_logit, dense_logit, cross], -1) / tau
    loss = -F.log_softmax(logits.float(), -1)[..., 0]
    return (loss * ok).sum() / ok.sum().clamp(min=1)


def info_nce(fa: torch.Tensor, fb: torch.Tensor, va: torch.Tensor, vb: torch.Tensor, H: torch.Tensor,
             stride: int, n: int, tau: float, exclusion: float, gen: torch.Generator,
             shift: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Symmetric InfoNCE of one level; returns the loss and a few statistics (accuracy of the positive)."""
    S = va.shape[-2:]
    q, p, ok = draw_positions(va, vb, H, stride, n, gen, shift)
    h, w = fa.shape[-2:]
    a = sample_at(fa, q, S)
    b = sample_at(fb, p, S)
    a = F.normalize(a, dim=-1)
    b = F.normalize(b, dim=-1)
    cen = level_centres(h, w, stride, fa.device)
    dva = sample_at(va.float(), cen[None].expand(fa.shape[0], -1, -1), S)[..., 0] > 0.99
    dvb = sample_at(vb.float(), cen[None].expand(fb.shape[0], -1, -1), S)[..., 0] > 0.99
    l_ab = _one_way(a, b, fb, dvb, p, stride, ok, tau, exclusion)
    l_ba = _one_way(b, a, fa, dva, q, stride, ok, tau, exclusion)
    with torch.no_grad():  # how often the positive beats every spatial negative of the dense map (a -> b)
        d = torch.einsum("bnc,bck->bnk", a, fb.flatten(2))
        far = torch.cdist(p, cen[None].expand(fa.shape[0], -1, -1)) > exclusion
        best_neg = d.masked_fill(~(far & dvb[:, None, :]), -2).max(-1).values
        acc = (((a * b).sum(-1) > best_neg) & ok).sum() / ok.sum().clamp(min=1)
    return 0.5 * (l_ab + l_ba), {"acc": float(acc), "n": int(ok.sum()), "feats": (a[ok], b[ok]), "ok": ok}


def coral(feats: list[torch.Tensor], domains: list[torch.Tensor], min_count: int = 16) -> torch.Tensor:
    """CORAL across domains: mean squared difference of each domain's mean and covariance from the pooled
    ones (features (N, C) with domain ids (N,)); 0 when fewer than two domains have ``min_count`` samples."""
    x = torch.cat(feats).float()
    d = torch.cat(domains)
    mu = x.mean(0)
    cov = torch.cov(x.t())
    terms = []
    for dom in torch.unique(d):
        xd = x[d == dom]
        if len(xd) < min_count:
            continue
        terms.append(((xd.mean(0) - mu) ** 2).sum() + ((torch.cov(xd.t()) - cov) ** 2).sum())
    if len(terms) < 2:
        return x.new_zeros(())
    return torch.stack(terms).mean()


@torch.no_grad()
def mine_shift(fa: torch.Tensor, fb: torch.Tensor, va: torch.Tensor, vb: torch.Tensor, H: torch.Tensor,
               stride: int, gen: torch.Generator, n: int = 256, max_shift: float = 4.0,
               min_inliers: int = 12, tol: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mined positives: the residual misregistration of each pair, from mutual nearest neighbours.

    For ``n`` positions of ``a`` the nearest neighbour in ``b``'s dense map is found, kept when mutual
    (its nearest neighbour in ``a`` is within one cell), and its offset from the known-warp position is
    taken; a robust translation fit (median, then the mean of the offsets within ``tol``) accepted when
    ``min_inliers`` agree and it is within ``max_shift`` px gives the correction of that pair's ground
    truth. Returns shift (B, 2) (0 where not accepted) and accepted (B,) bool.
    """
    tol = tol if tol is not None else 1.5 * stride
    S = va.shape[-2:]
    B = fa.shape[0]
    h, w = fa.shape[-2:]
    q, p, ok = draw_positions(va, vb, H, stride, n, gen)
    a = F.normalize(sample_at(fa, q, S), dim=-1)
    sim = torch.einsum("bnc,bck->bnk", a, fb.flatten(2))
    j = sim.argmax(-1)                                                  # (B, n)
    cen = level_centres(h, w, stride, fa.device)
    pb = cen[j]                                                         # (B, n, 2)
    back = torch.einsum("bck,bcn->bkn", fa.flatten(2), torch.gather(fb.flatten(2), 2, j[:, None, :].expand(-1, fb.shape[1], -1)))
    qb = cen[back.argmax(1)]                                           # (B, n, 2)
    mutual = ((qb - q).abs().max(-1).values <= stride) & ok
    res = pb - p
    shift = torch.zeros(B, 2, device=fa.device)
    accepted = torch.zeros(B, dtype=torch.bool, device=fa.device)
    for i in range(B):
        r = res[i][mutual[i]]
        if len(r) < min_inliers:
            continue
        med = r.median(0).values
        inl = (r - med).abs().max(-1).values <= tol
        if int(inl.sum()) < min_inliers or float(inl.float().mean()) < 0.3:
            continue
        s = r[inl].mean(0)
        if float(s.abs().max()) <= max_shift:
            shift[i], accepted[i] = s, True
    return shift, accepted


def warp_to_a(db: torch.Tensor, vb: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``b``'s dense map resampled onto ``a``'s pixel grid through the known warp (pixel ``q`` of ``a`` reads
    ``b`` at ``H q``). Shapes: db (B, C, S, S), vb (B, 1, S, S), H (B, 2, 3) -> (B, C, S, S), (B, 1, S, S) bool."""
    B, _, S, S2 = db.shape
    ys, xs = torch.meshgrid(torch.arange(S, device=db.device, dtype=torch.float32) + 0.5,
                            torch.arange(S2, device=db.device, dtype=torch.float32) + 0.5, indexing="ij")
    q = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)[None].expand(B, -1, -1)
    p = apply_h(H, q)
    g = torch.stack([2 * p[..., 0] / S2 - 1, 2 * p[..., 1] / S - 1], -1).view(B, S, S2, 2)
    out = F.grid_sample(db, g, mode="bilinear", padding_mode="zeros", align_corners=False)
    v = F.grid_sample(vb.float(), g, mode="bilinear", padding_mode="zeros", align_corners=False) > 0.99
    return out, v


def template_zncc(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Differentiable ZNCC of templates ``t`` (B, C, T, T) at every placement in ``s`` (B, C, T+2R, T+2R) ->
    (B, 2R+1, 2R+1): the statistic of :func:`engine.matching.ncc.masked_zncc` (means over channels and
    pixels together) for fully valid windows."""
    B, C, T, _ = t.shape
    n = float(C * T * T)
    t0 = t - t.mean(dim=(1, 2, 3), keepdim=True)
    size = tuple(s.shape[-2:])
    # correlation through FFTs (no wrap-around: the template is zero-padded to the search size and only
    # the placements inside the search region are kept); far cheaper than a big-kernel convolution on a CPU
    spec = (torch.fft.rfft2(t0.float(), s=size).conj() * torch.fft.rfft2(s.float(), s=size)).sum(1)
    num = torch.fft.irfft2(spec, s=size)[:, :size[0] - T + 1, :size[1] - T + 1]  # (B, 2R+1, 2R+1)
    ssum = F.avg_pool2d(s.sum(1, keepdim=True), T, stride=1)[:, 0] * (T * T)
    ssq = F.avg_pool2d((s * s).sum(1, keepdim=True), T, stride=1)[:, 0] * (T * T)
    var_s = (ssq - ssum * ssum / n).clamp(min=1e-6)
    var_t = (t0 * t0).sum(dim=(1, 2, 3)).clamp(min=1e-6)
    return num / torch.sqrt(var_s * var_t[:, None, None])


def template_loss(da: torch.Tensor, va: torch.Tensor, db: torch.Tensor, vb: torch.Tensor, H: torch.Tensor,
                  gen: torch.Generator, template: int = 32, radius: int = 8, n: int = 8,
                  scale: float = 20.0, label_sigma: float = 0.0) -> tuple[torch.Tensor, dict]:
    """The engine's fine matching step as a loss: templates of ``a``'s dense map are correlated (ZNCC)
    with ``b``'s map (resampled through the known warp, so the true shift is 0 everywhere) at every shift
    within ``radius`` px, and the softmax over shifts (logits ``scale * zncc``) is pushed onto the
    true one. This trains exactly what template matching needs: a correlation peak at the right place,
    sharper than at any neighbouring shift. ``label_sigma`` > 0 spreads the target over the shifts next
    to the true one (a Gaussian of that many px), so that the loss is about the peak standing out from
    the far, wrong shifts rather than about sub-pixel sharpness. Returns the loss and the share of
    templates whose ZNCC peak is within 1 px of the truth.

    Shapes: da, db (B, C, S, S); va, vb (B, 1, S, S) bool; H (B, 2, 3).
    """
    B, C, S, _ = da.shape
    T, R = template, radius
    if S < T + 2 * R + 1:
        raise ValueError(f"crop {S} px too small for template {T} + 2 x radius {R}")
    dbw, vbw = warp_to_a(db, vb, H)
    target = R * (2 * R + 1) + R
    soft = None
    if label_sigma > 0:
        d = torch.arange(-R, R + 1, dtype=torch.float32, device=da.device)
        g = torch.exp(-0.5 * (d[:, None] ** 2 + d[None, :] ** 2) / label_sigma ** 2).flatten()
        soft = g / g.sum()
    losses, hits, count = [], 0.0, 0
    for _ in range(n):
        y0, x0 = (int(v) for v in torch.randint(R, S - T - R + 1, (2,), generator=gen))
        t = da[:, :, y0:y0 + T, x0:x0 + T]
        s = dbw[:, :, y0 - R:y0 + T + R, x0 - R:x0 + T + R]
        ok = (va[:, :, y0:y0 + T, x0:x0 + T].float().mean(dim=(1, 2, 3)) > 0.95) & \
             (vbw[:, :, y0 - R:y0 + T + R, x0 - R:x0 + T + R].float().mean(dim=(1, 2, 3)) > 0.95)
        if not bool(ok.any()):
            continue
        z = template_zncc(t[ok], s[ok]).flatten(1)                                     # (b, (2R+1)^2)
        logp = F.log_softmax(scale * z.float(), 1)
        losses.append(-(logp[:, target].sum() if soft is None else (logp * soft).sum()))
        with torch.no_grad():
            k = z.argmax(1)
            dy, dx = k // (2 * R + 1) - R, k % (2 * R + 1) - R
            hits += float(((dy.abs() <= 1) & (dx.abs() <= 1)).sum())
        count += int(ok.sum())
    if count == 0:
        return da.new_zeros(()), {"acc": 0.0, "n": 0}
    return torch.stack(losses).sum() / count, {"acc": hits / count, "n": count}
