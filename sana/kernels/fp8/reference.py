"""fp8 (e4m3) GEMMs in plain PyTorch: the spec the Triton quantizer and `torch._scaled_mm` path are tested against.

Activations are quantized per token row and weights per output channel ("rowwise" scaling): each row is scaled so
its largest magnitude maps to 448, float8_e4m3fn's largest finite value, and rounded to nearest. The product
y = (s_x[m] * s_w[n]) * sum_k q_x[m, k] q_w[n, k] + bias[n] is then exact in the dequantized values, so the only
error is the two roundings to 3 mantissa bits (about 2^-4 relative per element).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0  # float8_e4m3fn's largest finite value
AMAX_FLOOR = 1e-12  # an all-zero row gets this amax, so its scale stays finite and its values 0


def quantize_fp8_rows_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] float -> (q [..., K] float8_e4m3fn, scale [...] float32) with x ~= q * scale[..., None].

    scale = amax(|row|) / 448; q = round_to_nearest(row * (448 / amax)), all in fp32.
    """
    xf = x.float()
    amax = xf.abs().amax(dim=-1).clamp_min(AMAX_FLOOR)  # [...]
    # Tensor-by-tensor divisions are IEEE on every device (a Python scalar divisor becomes a multiplication by
    # its reciprocal on CUDA), so the kernel can match these scales bit for bit.
    fp8_max = torch.full_like(amax, FP8_MAX)
    q = (xf * (fp8_max / amax).unsqueeze(-1)).to(FP8_DTYPE)
    return q, amax / fp8_max


def dequantize_fp8_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """(q [..., K], scale [...]) -> q * scale in fp32."""
    return q.float() * scale.unsqueeze(-1)


def fp8_linear_reference(x: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., K] -> [..., N] in x's dtype: x quantized per row, times the dequantized fp8 weight [N, K] (scales
    [N]), plus bias, in fp32."""
    q, scale = quantize_fp8_rows_reference(x)
    return fp8_linear_quantized_reference(q, scale, weight_fp8, weight_scale, bias, x.dtype)


def fp8_linear_quantized_reference(q: torch.Tensor, scale: torch.Tensor, weight_fp8: torch.Tensor,
                                   weight_scale: torch.Tensor, bias: torch.Tensor | None,
                                   out_dtype: torch.dtype) -> torch.Tensor:
    """The product of `fp8_linear_reference` for activations already quantized (q [..., K], row scales [...])."""
    weight = dequantize_fp8_rows(weight_fp8, weight_scale)  # [N, K]
    y = F.linear(dequantize_fp8_rows(q, scale), weight, None if bias is None else bias.float())
    return y.to(out_dtype)
