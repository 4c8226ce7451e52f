"""ReLU linear attention in plain PyTorch: the spec the Triton kernels are tested against.

Numerically diffusers' `SanaLinearAttnProcessor2_0`: ReLU on q and k, everything in fp32, eps 1e-15 added to
the normaliser, result cast back to the input dtype. diffusers pads v with a row of ones so that the
normaliser comes out of the same matmul; here it is a separate sum, which is the same arithmetic.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-15
FP16_MAX = 65504.0


def linear_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                               eps: float = EPS) -> torch.Tensor:
    """q, k, v: [B, N, H*D] (any strides) -> [B, N, H*D] in q's dtype.

    out[b, i, h] = relu(q_i) (sum_j relu(k_j)^T v_j) / (relu(q_i) . sum_j relu(k_j) + eps), per head h, in fp32.
    fp16 outputs are clipped to +-65504 before the cast: diffusers clips the projected output of this op to
    the same range, and clipping here keeps a value beyond it finite instead of turning it into inf.
    """
    b, n, inner = q.shape
    d = inner // heads
    qf = F.relu(q.float()).reshape(b, n, heads, d)  # [B, N, H, D]
    kf = F.relu(k.float()).reshape(b, n, heads, d)
    vf = v.float().reshape(b, n, heads, d)
    kv = torch.einsum("bnhd,bnhe->bhde", kf, vf)  # [B, H, D, D]
    k_sum = kf.sum(dim=1)  # [B, H, D]
    numerator = torch.einsum("bnhd,bhde->bnhe", qf, kv)  # [B, N, H, D]
    denominator = torch.einsum("bnhd,bhd->bnh", qf, k_sum).unsqueeze(-1)  # [B, N, H, 1]
    out = (numerator / (denominator + eps)).reshape(b, n, inner)  # [B, N, H*D]
    if q.dtype == torch.float16:
        out = out.clamp(-FP16_MAX, FP16_MAX)
    return out.to(q.dtype)


def linear_attention_diffusers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """The same op written as diffusers 0.42 writes it (head-major transposes, padded v), for benchmarks.

    q, k, v: [B, N, H*D] -> [B, N, H*D] in q's dtype. diffusers applies its fp16 clip after the output projection.
    """
    original_dtype = q.dtype
    query = q.transpose(1, 2).unflatten(1, (heads, -1))  # [B, H, D, N]
    key = k.transpose(1, 2).unflatten(1, (heads, -1)).transpose(2, 3)  # [B, H, N, D]
    value = v.transpose(1, 2).unflatten(1, (heads, -1))  # [B, H, D, N]
    query, key = F.relu(query), F.relu(key)
    query, key, value = query.float(), key.float(), value.float()
    value = F.pad(value, (0, 0, 0, 1), mode="constant", value=1.0)  # [B, H, D+1, N]
    scores = torch.matmul(value, key)  # [B, H, D+1, D]
    hidden = torch.matmul(scores, query)  # [B, H, D+1, N]
    hidden = hidden[:, :, :-1] / (hidden[:, :, -1:] + 1e-15)
    hidden = hidden.flatten(1, 2).transpose(1, 2)  # [B, N, H*D]
    return hidden.to(original_dtype)
