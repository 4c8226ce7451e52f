"""SANA-WM's query / key preparation in plain PyTorch, with diffusers' arithmetic and roundings.

x [B, N, C] (C = H * D) -> plain = scale * relu(RMSNorm(x)) as [B, N, H, D] (RMSNorm: fp32 statistics, the
normalised value rounded to the weight's dtype, then times the weight), and, given the rotary angles cos/sin
[N, D/2], rotated = plain rotated pairwise (channels 2j, 2j+1) in fp32 and rounded back. The GDN blocks take
ReLU'd queries and keys (keys scaled by D^-1/2 S^-1/2) and both forms (the normaliser reads the plain ones); the
softmax blocks take the rotated form of the un-ReLU'd ones.
"""

from __future__ import annotations

import torch


def qk_prep_reference(x: torch.Tensor, weight: torch.Tensor, eps: float, heads: int, *, relu: bool = True,
                      scale: float = 1.0, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None):
    """-> (plain [B, N, H, D], rotated [B, N, H, D] or None) in x's dtype."""
    b, n, c = x.shape
    variance = x.float().pow(2).mean(-1, keepdim=True)
    y = x * torch.rsqrt(variance + eps)  # fp32
    if weight.dtype in (torch.float16, torch.bfloat16):
        y = y.to(weight.dtype)
    y = (y * weight).to(x.dtype)
    if relu:
        y = torch.relu(y)
    if scale != 1.0:
        y = y * scale
    plain = y.reshape(b, n, heads, c // heads)
    if cos is None:
        return plain, None
    pairs = plain.float().unflatten(-1, (-1, 2))  # [B, N, H, D/2, 2]
    even, odd = pairs[..., 0], pairs[..., 1]
    c_, s_ = cos[:, None, :], sin[:, None, :]
    rotated = torch.stack([even * c_ - odd * s_, even * s_ + odd * c_], dim=-1).flatten(-2).to(x.dtype)
    return plain, rotated
