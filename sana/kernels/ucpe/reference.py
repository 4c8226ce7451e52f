"""SANA-WM's UCPE camera transform of attention heads in plain PyTorch, with diffusers' arithmetic.

For x [B, N, H, D] and a token's 4x4 matrix P (P^T for queries, P^-1 for keys and values, P to decode outputs):
the first D/2 channels of each head, in groups of four, become P @ group (in x's dtype, as diffusers' einsum);
the last D/2, as D/4 (even, odd) pairs, are rotated by the camera rotary table (cos, sin [N, D/4]) in fp32 and
rounded back, by the conjugate when decoding. Encoded queries, keys and values are then shrunk to at most the RMS
of the head vector they came from (the translation can inflate it), and the keys' inflation
(|encoded| / |plain|)^2 feeds the GDN's per-frame beta discount.
"""

from __future__ import annotations

import torch

RMS_EPS = 1e-6  # diffusers' `_downscale_to_reference_rms`
NORM_FLOOR = 1e-6  # the key norms' clamp before their ratio


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    """x [B, N, H, 2P] rotated pairwise (channels 2j, 2j+1) by angle tables cos/sin [N, P] in fp32, cast back to
    x's dtype; `inverse` rotates by the negative angle."""
    xf = x.float().unflatten(-1, (-1, 2))  # [B, N, H, P, 2]
    even, odd = xf[..., 0], xf[..., 1]
    c, s = cos[:, None, :], (-sin if inverse else sin)[:, None, :]
    return torch.stack([even * c - odd * s, even * s + odd * c], dim=-1).flatten(-2).to(x.dtype)


def downscale_to_reference_rms(reference: torch.Tensor, transformed: torch.Tensor, eps: float = RMS_EPS) -> torch.Tensor:
    """Shrink each token's head vector [..., D] of `transformed` to at most the RMS of the same vector of
    `reference` (the UCPE translation can inflate it); never enlarges. In the inputs' dtype, as diffusers."""
    reference_rms = reference.square().mean(dim=-1, keepdim=True).add(eps).sqrt()
    transformed_rms = transformed.square().mean(dim=-1, keepdim=True).add(eps).sqrt()
    return transformed * (reference_rms / transformed_rms.clamp_min(eps)).clamp(max=1.0)


def ucpe_reference(x: torch.Tensor, mats: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                   inverse_rope: bool = False, downscale: bool = False, inflation: bool = False):
    """x [B, N, H, D], mats [B, N, 4, 4] (x's dtype), cos/sin [N, D/4] fp32 -> the transformed x [B, N, H, D] in
    x's dtype; with `inflation`, also ((max(|out|, 1e-6) / max(|x|, 1e-6))^2 [B, N, H, 1] per head vector."""
    b, n, h, d = x.shape
    projected, rotated = x.split(d // 2, dim=-1)
    projected = torch.einsum("bnij,bnhkj->bnhki", mats.to(x.dtype), projected.reshape(b, n, h, -1, 4))
    out = torch.cat([projected.reshape(b, n, h, d // 2), rotate_pairs(rotated, cos, sin, inverse_rope)], dim=-1)
    if downscale:
        out = downscale_to_reference_rms(x, out)
    if not inflation:
        return out
    plain = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(NORM_FLOOR)
    return out, (torch.linalg.vector_norm(out, dim=-1, keepdim=True).clamp_min(NORM_FLOOR) / plain) ** 2
