"""Triton kernels for the SANA DiT and the DC-AE decoder, one folder per op (`reference.py` spec, `triton.py`
kernel, `bench.py`).

Public functions (all inference-only, no autograd):
    linear_attention(q, k, v, heads, eps=1e-15) -> [B, N, H*D]
    linear_attention_rope(q, k, v, cos, sin, heads, eps=1e-15) -> [B, N, H*D] (RoPE on the numerator only)
    gdn_bidirectional(q, k, v, beta, decay, q_plain=None, k_plain=None, eps=1e-8) -> [B, N, H, D] (SANA-WM)
    short_conv(x, weight, frames) -> [B, N, C] (SANA-WM's symmetric depthwise conv over frames)
    temporal_conv(y, weight, tokens_per_frame, add_input=False) -> [B, N, C_out] (SANA-Video's dense conv over
        frames as one implicit GEMM; with add_input, y + conv(y))
    qk_prep(x, weight, eps, heads, relu=True, scale=1.0, cos=None, sin=None) -> (plain, rotated) [B, N, H, D] each
        (SANA-WM's queries and keys: RMSNorm, ReLU, scale, RoPE)
    silu_gate(x, gate) -> x's shape (SANA-WM's output gate, x * silu(gate) in fp32)
    text_attention(q, k, v, heads, mask=None) -> [B, N, H*D] (cross-attention to the text, token-major in and out)
    ucpe(x, mats, cos, sin, inverse_rope=False, downscale=False, inflation=False) -> [B, N, H, D] (SANA-WM's camera
        transform of heads; with inflation, also [B, N, H, 1])
    modulated_layer_norm(x, shift, scale, eps=1e-6) -> [B, N, C]
    gated_residual_modulated_norm(x, gate, y, shift, scale, eps=1e-6) -> ([B, N, C], [B, N, C])
    modulated_layer_norm_fp8(x, shift, scale, eps=1e-6) -> (float8_e4m3fn [B, N, C], float32 [B, N]) (the row as an
        fp8 GEMM's quantized input)
    gated_residual_modulated_norm_fp8(x, gate, y, shift, scale, eps=1e-6, y2=None) -> ([B, N, C], float8_e4m3fn [B, N, C],
        float32 [B, N])
    gated_residual(x, gate, y) -> [B, N, C]
    linear_gated_residual(h, weight, bias, x, gate) -> [B, N, D] (x + gate * (h W^T + bias), one GEMM with the
        residual in its epilogue)
    mixffn_middle(h, height, width, dw_weight, dw_bias) -> [B, N, Hd]
    rms_norm_affine(x, weight, bias, eps=1e-5, residual=None) -> [..., C]
    assemble_phases(y, skip=None, bias=None) -> [B, Cout, 2h, 2w] channels-last
    bias_activation(x, bias, act) -> x, in place (a conv's bias and the activation after it, one pass)
    multiscale_projection(x, height, width, dw_weight, pw_weight) -> [B, N, C] (DC-AE's depthwise kxk then grouped
        1x1 conv, token-major)
    quantize_fp8_rows(x) -> (float8_e4m3fn [..., K], float32 [...])
    fp8_linear(x, weight_fp8, weight_scale, bias) -> [..., N] (quantize + torch._scaled_mm; cc 8.9+)
    fp8_linear_quantized(q, scale, weight_fp8, weight_scale, bias) -> [..., N] (the GEMM alone)

Importing this package imports Triton when the kernels can launch (Triton installed, and a CUDA GPU or
TRITON_INTERPRET=1); the functions are absent otherwise, and `triton_available()` says which.
"""

from __future__ import annotations

import importlib.util

import torch

from ._common import interpreting


def triton_available() -> bool:
    """True when Triton is installed and can launch here: a CUDA GPU, or TRITON_INTERPRET=1 on the CPU."""
    if importlib.util.find_spec("triton") is None:
        return False
    return torch.cuda.is_available() or interpreting()


__all__ = ["triton_available"]

if triton_available():
    # Only where the kernels can launch (a CUDA GPU, or the interpreter): elsewhere importing Triton costs a
    # quarter second of every CPU command's start for nothing (the references live beside the kernels).
    # Bound after the subpackages are imported, so `sana.kernels.linear_attention` is the function (the
    # import system would otherwise leave the subpackage of the same name there).
    from .bias_act.triton import bias_activation
    from .fp8.triton import fp8_linear, fp8_linear_quantized, quantize_fp8_rows
    from .gdn.triton import gdn_bidirectional
    from .linear_attention.triton import linear_attention
    from .linear_attention_rope.triton import linear_attention_rope
    from .linear_residual.triton import linear_gated_residual
    from .mixffn.triton import mixffn_middle
    from .multiscale.triton import multiscale_projection
    from .modulation.triton import (gated_residual, gated_residual_modulated_norm, gated_residual_modulated_norm_fp8,
                                    modulated_layer_norm, modulated_layer_norm_fp8)
    from .rms_norm.triton import rms_norm_affine
    from .short_conv.triton import short_conv
    from .temporal_conv.triton import temporal_conv
    from .qk_prep.triton import qk_prep
    from .silu_gate.triton import silu_gate
    from .text_attention.triton import text_attention
    from .ucpe.triton import ucpe
    from .upsample.triton import assemble_phases

    __all__ += ["linear_attention", "modulated_layer_norm", "gated_residual_modulated_norm", "mixffn_middle",
                "rms_norm_affine", "assemble_phases", "gated_residual", "quantize_fp8_rows", "fp8_linear"]
    __all__ += ["linear_attention_rope", "modulated_layer_norm_fp8", "gated_residual_modulated_norm_fp8",
                "fp8_linear_quantized"]
    __all__ += ["gdn_bidirectional", "short_conv", "ucpe", "silu_gate", "qk_prep", "temporal_conv", "text_attention",
                "bias_activation", "multiscale_projection", "linear_gated_residual"]
