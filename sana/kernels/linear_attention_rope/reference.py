"""ReLU linear attention with rotary position embedding in the numerator only: the spec of SANA-Video's
self-attention (diffusers' `SanaLinearAttnProcessor3_0`), in plain PyTorch.

    out_n = sum_m (rot(q_n) . rot(k_m)) v_m / (q_n . sum_m k_m + eps),   q = relu(q), k = relu(k), per head

The rotation pairs channels (2i, 2i+1) ("interleaved" RoPE): (x0, x1) -> (x0 c - x1 s, x0 s + x1 c) with the
token's angle for that pair. The denominator uses the un-rotated q and k, so it stays positive.

dtypes as diffusers: ReLU and the rotation in the input dtype (the tables cast to it), the numerator in fp32,
the denominator in the input dtype, the quotient in fp32, cast back to the input dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-15


def rotate_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., N, H, D] rotated pairwise by per-token angles; cos, sin [N, D] (each pair's value repeated in its
    two channels, as diffusers' `repeat_interleave_real` tables hold them). Computed in x's dtype."""
    cos = cos.to(x.dtype)[:, None, 0::2]  # [N, 1, D/2]
    sin = sin.to(x.dtype)[:, None, 1::2]
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)  # [..., N, H, D/2] each
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


def linear_attention_rope_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor,
                                    sin: torch.Tensor, heads: int, eps: float = EPS) -> torch.Tensor:
    """q, k, v [B, N, H*D] (any strides; q and k before the ReLU), cos, sin [N, D] -> [B, N, H*D] in q's dtype."""
    b, n, inner = q.shape
    d = inner // heads
    qr = F.relu(q).reshape(b, n, heads, d)  # [B, N, H, D], input dtype
    kr = F.relu(k).reshape(b, n, heads, d)
    q_rot = rotate_interleaved(qr, cos, sin).float()
    k_rot = rotate_interleaved(kr, cos, sin).float()
    vf = v.float().reshape(b, n, heads, d)
    kv = torch.einsum("bnhd,bnhe->bhde", k_rot, vf)  # [B, H, D, D] fp32
    numerator = torch.einsum("bnhd,bhde->bnhe", q_rot, kv)  # [B, N, H, D] fp32
    k_sum = kr.sum(dim=1)  # [B, H, D], input dtype
    denominator = torch.einsum("bnhd,bhd->bnh", qr, k_sum).unsqueeze(-1)  # [B, N, H, 1], input dtype
    out = numerator * (1 / (denominator + eps))  # diffusers multiplies by the reciprocal
    return out.reshape(b, n, inner).to(q.dtype)
