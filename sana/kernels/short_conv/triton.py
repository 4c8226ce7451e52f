"""The symmetric short convolution over frames as one Triton pass over token-major activations.

The PyTorch form (`reference.py`) permutes [B, T*S, C] to [B*S, T, C], copies it contiguous, runs cuDNN's
depthwise conv1d twice (once on flipped frames) and permutes back: on an H200 at SANA-WM's 704 x 1280 x 161
frames that is four copies, two flips and a generic depthwise kernel per call, most of the "elementwise" time of
the WM forward. Here each program reads a [BLOCK_S, BLOCK_C] tile of one frame and the same tile of the 2K - 2
frames around it, straight from the input's strides (the key view of a fused qkv projection), and writes the
output tile: 2K - 1 loads per output (the neighbours come from L2), fp32 sums, one rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float


@triton.jit
def _short_conv_kernel(
    x_ptr, w_ptr, out_ptr,
    T, S, C,
    stride_xb, stride_xn, stride_xc, stride_wc, stride_wk,
    K: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Program (s block, c block, b * T + t): out[b, t, s, c] for BLOCK_S tokens and BLOCK_C channels."""
    pid_s = tl.program_id(0)
    pid_c = tl.program_id(1)
    bt = tl.program_id(2)
    b = bt // T
    t = bt % T
    tokens = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    chans = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (tokens < S)[:, None] & (chans < C)[None, :]
    x_b = x_ptr + b.to(tl.int64) * stride_xb
    offs = tokens[:, None].to(tl.int64) * stride_xn + chans[None, :] * stride_xc

    centre = tl.load(w_ptr + chans * stride_wc + (K - 1) * stride_wk, mask=chans < C, other=0.0).to(tl.float32)
    frame = x_b + (t * S).to(tl.int64) * stride_xn
    acc = centre[None, :] * tl.load(frame + offs, mask=mask, other=0.0).to(tl.float32)
    for j in tl.static_range(1, K):
        tap = tl.load(w_ptr + chans * stride_wc + (K - 1 - j) * stride_wk, mask=chans < C, other=0.0)
        before = t - j
        after = t + j
        frame_index = tl.zeros((BLOCK_S, BLOCK_C), dtype=tl.int32)  # the frame checks as masks of the tile's shape
        x_before = tl.load(x_b + (before * S).to(tl.int64) * stride_xn + offs,
                           mask=mask & (frame_index + before >= 0), other=0.0)
        x_after = tl.load(x_b + (after * S).to(tl.int64) * stride_xn + offs,
                          mask=mask & (frame_index + after < T), other=0.0)
        acc += tap.to(tl.float32)[None, :] * (x_before.to(tl.float32) + x_after.to(tl.float32))
    out = out_ptr + ((b.to(tl.int64) * T + t) * S) * C + tokens[:, None].to(tl.int64) * C + chans[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)


def short_conv(x: torch.Tensor, weight: torch.Tensor, frames: int) -> torch.Tensor:
    """The symmetric short conv over frames; the spec is `reference.short_conv_reference`.

    Args:
        x: [B, N, C], N = T * S tokens in (frame, token) order, any strides (fp32, fp16 or bf16).
        weight: [C, 1, K] depthwise taps (fla's ShortConvolution layout), any float dtype.
        frames: T.

    Returns:
        [B, N, C] contiguous in x's dtype; sums in fp32, one rounding (the reference rounds each of its terms).
    """
    name = "short_conv"
    if x.dim() != 3:
        raise ValueError(f"{name}: x must be [B, N, C], got {tuple(x.shape)}")
    b, n, c = x.shape
    if weight.dim() != 3 or weight.shape[0] != c or weight.shape[1] != 1:
        raise ValueError(f"{name}: weight must be [C, 1, K] with C = {c}, got {tuple(weight.shape)}")
    if frames < 1 or n % frames:
        raise ValueError(f"{name}: {n} tokens do not split into {frames} frames")
    check_float(name, "x", x)
    check_float(name, "weight", weight)
    check_device(name, x, weight)
    out = torch.empty((b, n, c), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    s = n // frames
    block_s, block_c = 32, 128
    grid = (triton.cdiv(s, block_s), triton.cdiv(c, block_c), b * frames)
    _short_conv_kernel[grid](
        x, weight, out, frames, s, c,
        x.stride(0), x.stride(1), x.stride(2), weight.stride(0), weight.stride(2),
        K=weight.shape[-1], BLOCK_S=block_s, BLOCK_C=block_c, num_warps=4,
    )
    return out
