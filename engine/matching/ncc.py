"""Masked, multi-channel zero-normalised cross-correlation computed with FFTs.

Shapes:
    template: (B, C, h, w) with mask (B, 1, h, w)
    search:   (B, C, H, W) with mask (B, 1, H, W), H >= h, W >= w
    return:   (B, H - h + 1, W - w + 1) ZNCC for every placement of the template inside ``search``
              (offset (0, 0) = template's top-left on search's top-left) and the overlap count.
"""
from __future__ import annotations

import torch
from scipy.fft import next_fast_len


def _box_sums(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Sums of ``x`` (B, H, W) over every h x w window (integral image). Returns (B, H-h+1, W-w+1)."""
    ii = torch.nn.functional.pad(x.double().cumsum(1).cumsum(2), (1, 0, 1, 0))
    return (ii[:, h:, w:] - ii[:, :-h, w:] - ii[:, h:, :-w] + ii[:, :-h, :-w]).to(x.dtype)


def _zncc(sab, sa, sb, saa, sbb, n) -> torch.Tensor:
    """ZNCC from sums; -1 where either side has (numerically) no variance, clamped to [-1, 1]."""
    nn = n.clamp(min=1.0)
    cov = sab - sa * sb / nn
    va = saa - sa * sa / nn
    vb = sbb - sb * sb / nn
    # float32 sums lose ~1e-6 of their magnitude; a variance below that is no variance at all
    ok = (va > 1e-4 * saa.abs() + 1e-9) & (vb > 1e-4 * sbb.abs() + 1e-9)
    z = cov / torch.sqrt(va.clamp(min=1e-12) * vb.clamp(min=1e-12))
    return torch.where(ok, z.clamp(-1.0, 1.0), torch.full_like(z, -1.0))


def fft_size(H: int, W: int) -> tuple[int, int]:
    """The FFT size for searches of H x W: the next 2^a 3^b 5^c lengths."""
    return next_fast_len(H, real=True), next_fast_len(W, real=True)


def prepare_templates(template: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """What the unmasked path needs of fully valid templates (B, C, h, w), for searches of FFT size ``size``:
    the conjugated spectra, the sums and the sums of squares. Computed once, it serves every search of that
    size (the verify stage matches the same reference templates under each hypothesis and decoy)."""
    return (torch.fft.rfft2(template, s=size).conj().resolve_conj(), template.sum(dim=(1, 2, 3)).view(-1, 1, 1),
            (template * template).sum(dim=(1, 2, 3)).view(-1, 1, 1))


def _zncc_unmasked(template: torch.Tensor, search: torch.Tensor,
                   prepared: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
    """Fast path of :func:`masked_zncc` when every pixel is valid: one FFT product plus box sums.
    ``prepared``: :func:`prepare_templates` of ``template`` for this search size, when already computed."""
    b, c, h, w = template.shape
    H, W = search.shape[-2:]
    size = fft_size(H, W)
    ft, sa, saa = prepared if prepared is not None else prepare_templates(template, size)
    sab = torch.fft.irfft2((ft * torch.fft.rfft2(search, s=size)).sum(1), s=size)[:, :H - h + 1, :W - w + 1]
    n = float(h * w * c)
    sb = _box_sums(search.sum(1), h, w)
    sbb = _box_sums((search * search).sum(1), h, w)
    return _zncc(sab, sa, sb, saa, sbb, torch.full_like(sab, n))


def masked_zncc(template: torch.Tensor, tmask: torch.Tensor, search: torch.Tensor, smask: torch.Tensor,
                min_overlap: float = 0.5, prepared: tuple[torch.Tensor, ...] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """ZNCC of the (masked) template over every valid offset in the (masked) search region.

    Offsets where the overlapping valid area is below ``min_overlap`` of the template's valid area get -1.
    Items whose masks are entirely valid take a cheaper path with the same result. A template batch of one
    is correlated with every search of the batch (its transforms computed once). ``prepared``: the
    templates' :func:`prepare_templates` for this search size (item for item), when computed before.
    """
    if template.ndim != 4 or search.ndim != 4:
        raise ValueError("template and search must be (B, C, H, W)")
    full = tmask.flatten(1).all(1) & smask.flatten(1).all(1)
    if template.shape[0] == 1 and search.shape[0] > 1 and bool(full.any()):
        n = search.shape[0]  # one template against a batch of searches: the fast path needs it per item
        template, tmask = template.expand(n, -1, -1, -1), tmask.expand(n, -1, -1, -1)
    if bool(full.any()):
        h, w = template.shape[-2:]
        H, W = search.shape[-2:]
        z = torch.empty(template.shape[0], H - h + 1, W - w + 1, dtype=template.dtype, device=template.device)
        n = torch.full_like(z, float(h * w))
        pre = None if prepared is None else tuple(p[full] for p in prepared)
        z[full] = _zncc_unmasked(template[full], search[full], pre)
        part = ~full
        if bool(part.any()):
            z[part], n[part] = masked_zncc(template[part], tmask[part], search[part], smask[part], min_overlap)
        return z, n
    b, c, h, w = template.shape
    H, W = search.shape[-2:]
    size = fft_size(H, W)
    tm, sm = tmask.to(template.dtype), smask.to(search.dtype)
    t = template * tm
    s = search * sm
    rf = torch.fft.rfft2
    # template side (conjugated once), search side; masks and channel sums share one FFT each
    # (a lazily conjugated tensor makes every product ~4x slower: the conjugates are materialised once)
    ft = rf(t, s=size).conj().resolve_conj()
    fs = rf(s, s=size)
    fta = rf(torch.cat([tm, t.sum(1, keepdim=True), (t * t).sum(1, keepdim=True)], 1), s=size).conj().resolve_conj()
    fsa = rf(torch.cat([sm, s.sum(1, keepdim=True), (s * s).sum(1, keepdim=True)], 1), s=size)
    oy, ox = H - h + 1, W - w + 1

    def corr(fa: torch.Tensor, fb: torch.Tensor | float) -> torch.Tensor:
        return torch.fft.irfft2(fa * fb, s=size)[..., :oy, :ox]

    if b == 1 and fs.shape[0] > 1:  # one template against a batch (the coarse search): ~3x faster than broadcasting
        sab = corr(torch.einsum("chw,nchw->nhw", ft[0], fs), 1.0)
    else:
        sab = corr((ft * fs).sum(1), 1.0)
    n = corr(fta[:, 0], fsa[:, 0]) * c
    sa = corr(fta[:, 1], fsa[:, 0])
    sb = corr(fta[:, 0], fsa[:, 1])
    saa = corr(fta[:, 2], fsa[:, 0])
    sbb = corr(fta[:, 0], fsa[:, 2])
    z = _zncc(sab, sa, sb, saa, sbb, n)
    full = tm.sum(dim=(1, 2, 3)).view(-1, 1, 1) * c
    z = torch.where(n >= min_overlap * full, z, torch.full_like(z, -1.0))
    return z, n / c


def subpixel_peak(z: torch.Tensor, exclusion: int = 2, edge_margin: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer argmax refined by a separable parabola fit, plus the best peak outside ``exclusion`` px.

    Shapes: z (B, H, W) -> offsets (B, 2) as (x, y) floats, peak (B,), second peak (B,)
    """
    b, hh, ww = z.shape
    flat = z.reshape(b, -1)
    peak, idx = flat.max(1)
    iy, ix = idx // ww, idx % ww

    def refine(zm, z0, zp):
        den = zm - 2 * z0 + zp
        d = torch.where(den < -1e-9, 0.5 * (zm - zp) / den, torch.zeros_like(den))
        return d.clamp(-0.5, 0.5)

    ar = torch.arange(b, device=z.device)
    ixm, ixp = (ix - 1).clamp(0, ww - 1), (ix + 1).clamp(0, ww - 1)
    iym, iyp = (iy - 1).clamp(0, hh - 1), (iy + 1).clamp(0, hh - 1)
    dx = refine(z[ar, iy, ixm], peak, z[ar, iy, ixp])
    dy = refine(z[ar, iym, ix], peak, z[ar, iyp, ix])
    dx = torch.where((ix > 0) & (ix < ww - 1), dx, torch.zeros_like(dx))
    dy = torch.where((iy > 0) & (iy < hh - 1), dy, torch.zeros_like(dy))
    yy = torch.arange(hh, device=z.device).view(1, -1, 1)
    xx = torch.arange(ww, device=z.device).view(1, 1, -1)
    near = ((yy - iy.view(-1, 1, 1)).abs() <= exclusion) & ((xx - ix.view(-1, 1, 1)).abs() <= exclusion)
    second = torch.where(near, torch.full_like(z, -1.0), z).reshape(b, -1).max(1).values
    off = torch.stack([ix.float() + dx, iy.float() + dy], dim=1)
    # a maximum on or next to the window's border is the foot of a peak outside the window
    m = edge_margin
    at_edge = (ix < m) | (ix > ww - 1 - m) | (iy < m) | (iy > hh - 1 - m)
    return off, torch.where(at_edge, torch.full_like(peak, -1.0), peak), second
