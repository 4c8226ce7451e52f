"""The gated residual of a linear in plain PyTorch: the DiT block's

    out[b, n] = x[b, n] + gate[b] * (W h[b, n] + bias)

with the product summed in fp32 and everything after it in fp32 too, rounded once to x's dtype. The model's
unfused form (`ops.gated_residual(x, gate, linear(h))`) rounds the linear's output first, as diffusers does;
the fused one skips that rounding, so it is nearer the fp32 model than either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_gated_residual_reference(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                    x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """h [B, N, K], weight [D, K], bias [D] or None, x [B, N, D], gate [B, 1, D] or None (1) -> [B, N, D] in x's
    dtype, computed in fp32 (fp64 inputs stay fp64) and rounded once."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = F.linear(h.to(work), weight.to(work), None if bias is None else bias.to(work))  # [B, N, D]
    if gate is not None:
        y = y * gate.to(work)
    return (x.to(work) + y).to(x.dtype)


def linear_gated_residual_unfused(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                                  x: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """What the block runs without the fused kernel: cuBLAS's linear (bias in its epilogue, rounded to h's dtype),
    then the gated residual in one pass (the `modulation` kernel where it runs, else torch's addcmul)."""
    from ... import ops

    y = F.linear(h, weight, bias)
    if gate is None:
        return x + y
    return ops.gated_residual(x, gate, y)
