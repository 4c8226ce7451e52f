"""RMSNorm with weight and bias (+ residual) in plain PyTorch: the spec the Triton kernel is tested against.

This is the DC-AE's norm (diffusers' `RMSNorm(elementwise_affine=True, bias=True)` over the channels of an image
held channels-last), followed by the block's residual add. Precision: statistics, scaling, affine and residual
in fp32, one rounding to x's dtype. diffusers rounds the normalised value to the weight's dtype before the
affine and rounds again after the residual add, so the two differ by half-precision rounding.
"""

from __future__ import annotations

import torch

EPS = 1e-5  # diffusers' RMSNorm in the DC-AE


def rms_norm_affine_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = EPS,
                              residual: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., C] -> x * rsqrt(mean(x^2) + eps) * weight (+ bias) (+ residual), same shape, in x's dtype (fp32
    math)."""
    xf = x.float()
    out = xf * torch.rsqrt(xf.square().mean(dim=-1, keepdim=True) + eps) * weight.float()
    if bias is not None:
        out = out + bias.float()
    if residual is not None:
        out = out + residual.float()
    return out.to(x.dtype)


def rms_norm_affine_diffusers(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = EPS,
                              residual: torch.Tensor | None = None) -> torch.Tensor:
    """The same op as diffusers' DC-AE runs it (model-dtype affine, a separate residual add), for benchmarks."""
    variance = x.float().pow(2).mean(-1, keepdim=True)
    out = (x * torch.rsqrt(variance + eps)).to(weight.dtype) * weight + bias
    return out + residual if residual is not None else out
