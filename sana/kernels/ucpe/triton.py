"""The UCPE camera transform of attention heads as one Triton pass.

The PyTorch form (`reference.py`, diffusers' arithmetic) runs a batched 4x4 einsum (small wmma GEMMs), a complex
rotation through fp32 copies, a concatenation and, for encoded heads, two RMS reductions and a rescale: about ten
kernels and as many full passes over [B, N, H, D] per call, four calls per camera attention block. Here a
program takes BLOCK_T tokens of one batch row, loads their sixteen matrix entries and rotary angles once, and for
each of its heads reads the head vector once with contiguous loads (split in registers into the four channels of
each group as four [tokens, groups] tiles and the rotary pairs as even and odd tiles), computes the transform, the
RMS rescale and the key inflation in fp32 registers, and writes the result once with contiguous stores. (A first
version loaded the four channels and the pairs through stride-4 and stride-2 pointers: 240 GB/s on an H200.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float, check_last_dim_contiguous
from .reference import NORM_FLOOR, RMS_EPS

_RMS_EPS = tl.constexpr(RMS_EPS)
_NORM_FLOOR = tl.constexpr(NORM_FLOOR)


@triton.jit
def _ucpe_kernel(
    x_ptr, m_ptr, cos_ptr, sin_ptr, out_ptr, infl_ptr,
    N, H,
    stride_xb, stride_xn, stride_xh, stride_mb, stride_mn, stride_cn,
    D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_P: tl.constexpr, HEADS: tl.constexpr,
    INVERSE: tl.constexpr, DOWNSCALE: tl.constexpr, INFLATION: tl.constexpr,
):
    b = tl.program_id(2)
    tokens = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = tokens < N
    chan = tl.arange(0, 4 * BLOCK_G)  # the first half: groups of four channels
    pair_chan = tl.arange(0, 2 * BLOCK_P)  # the second half: (even, odd) channel pairs
    pairs = tl.arange(0, BLOCK_P)
    g_mask = t_ok[:, None] & (chan < D // 2)[None, :]
    p_mask = t_ok[:, None] & (pair_chan < D // 2)[None, :]

    # The token's matrix [4, 4] (16 [BLOCK_T, 1] columns) and its rotary angles, shared by the program's heads.
    m_row = m_ptr + b.to(tl.int64) * stride_mb + tokens.to(tl.int64) * stride_mn
    m00 = tl.load(m_row + 0, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m01 = tl.load(m_row + 1, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m02 = tl.load(m_row + 2, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m03 = tl.load(m_row + 3, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m10 = tl.load(m_row + 4, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m11 = tl.load(m_row + 5, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m12 = tl.load(m_row + 6, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m13 = tl.load(m_row + 7, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m20 = tl.load(m_row + 8, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m21 = tl.load(m_row + 9, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m22 = tl.load(m_row + 10, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m23 = tl.load(m_row + 11, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m30 = tl.load(m_row + 12, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m31 = tl.load(m_row + 13, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m32 = tl.load(m_row + 14, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    m33 = tl.load(m_row + 15, mask=t_ok, other=0.0).to(tl.float32)[:, None]
    angle = tokens.to(tl.int64)[:, None] * stride_cn + pairs[None, :]
    a_mask = t_ok[:, None] & (pairs < D // 4)[None, :]
    c = tl.load(cos_ptr + angle, mask=a_mask, other=0.0)
    s = tl.load(sin_ptr + angle, mask=a_mask, other=0.0)
    if INVERSE:
        s = -s

    x_rows = x_ptr + b.to(tl.int64) * stride_xb + tokens.to(tl.int64)[:, None] * stride_xn
    o_rows = out_ptr + ((b.to(tl.int64) * N + tokens.to(tl.int64)[:, None]) * H) * D
    dtype = out_ptr.dtype.element_ty
    for i in range(HEADS):
        h = tl.program_id(0) * HEADS + i
        rows_ok = t_ok & ((tokens * 0 + h) < H)  # a [T] mask: the last program's heads may run past H
        head_g_mask = g_mask & rows_ok[:, None]
        head_p_mask = p_mask & rows_ok[:, None]
        xh = x_rows + h * stride_xh
        oh = o_rows + h * D
        # Contiguous loads, split in registers: [T, 4G] -> [T, G, 2, 2] -> channels 4g + {0, 2} and 4g + {1, 3}
        # -> the four [T, G] channel tiles; the second half's pairs likewise.
        lo, hi = tl.split(tl.reshape(tl.load(xh + chan[None, :], mask=head_g_mask, other=0.0).to(tl.float32),
                                     (BLOCK_T, BLOCK_G, 2, 2)))
        x0, x2 = tl.split(lo)
        x1, x3 = tl.split(hi)
        xe, xo = tl.split(tl.reshape(tl.load(xh + D // 2 + pair_chan[None, :], mask=head_p_mask,
                                             other=0.0).to(tl.float32), (BLOCK_T, BLOCK_P, 2)))
        y0 = m00 * x0 + m01 * x1 + m02 * x2 + m03 * x3
        y1 = m10 * x0 + m11 * x1 + m12 * x2 + m13 * x3
        y2 = m20 * x0 + m21 * x1 + m22 * x2 + m23 * x3
        y3 = m30 * x0 + m31 * x1 + m32 * x2 + m33 * x3
        ye = xe * c - xo * s
        yo = xe * s + xo * c
        if DOWNSCALE or INFLATION:
            x_sq = tl.sum(x0 * x0 + x1 * x1 + x2 * x2 + x3 * x3, axis=1) + tl.sum(xe * xe + xo * xo, axis=1)
            y_sq = tl.sum(y0 * y0 + y1 * y1 + y2 * y2 + y3 * y3, axis=1) + tl.sum(ye * ye + yo * yo, axis=1)
            if DOWNSCALE:
                x_rms = tl.sqrt(x_sq / D + _RMS_EPS)
                y_rms = tl.sqrt(y_sq / D + _RMS_EPS)
                factor = tl.minimum(x_rms / tl.maximum(y_rms, _RMS_EPS), 1.0)
                y_sq = y_sq * factor * factor
                f = factor[:, None]
                y0, y1, y2, y3, ye, yo = y0 * f, y1 * f, y2 * f, y3 * f, ye * f, yo * f
            if INFLATION:
                ratio = tl.maximum(tl.sqrt(y_sq), _NORM_FLOOR) / tl.maximum(tl.sqrt(x_sq), _NORM_FLOOR)
                tl.store(infl_ptr + (b.to(tl.int64) * N + tokens) * H + h, ratio * ratio, mask=rows_ok)
        # The inverse of the splits: channel 4g + 2i + j of the tile is y_{2i+j}.
        first = tl.reshape(tl.join(tl.join(y0, y2), tl.join(y1, y3)), (BLOCK_T, 4 * BLOCK_G))
        tl.store(oh + chan[None, :], first.to(dtype), mask=head_g_mask)
        second = tl.reshape(tl.join(ye, yo), (BLOCK_T, 2 * BLOCK_P))
        tl.store(oh + D // 2 + pair_chan[None, :], second.to(dtype), mask=head_p_mask)


@dataclass(frozen=True)
class Config:
    """A launch shape: tokens a program, heads a program (looped over) and warps."""

    rows: int
    heads: int
    num_warps: int


def default_config(heads: int) -> Config:
    """32 tokens and four heads a program, eight warps: the fastest of the sweep on an H200 (2.8 TB/s)."""
    return Config(32, min(4, heads), 8)


def ucpe(x: torch.Tensor, mats: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, inverse_rope: bool = False,
         downscale: bool = False, inflation: bool = False, config: Config | None = None):
    """The UCPE transform of every head; the spec is `reference.ucpe_reference`.

    Args:
        x: [B, N, H, D] (D a multiple of 8), last dim contiguous, any other strides (fp32, fp16 or bf16).
        mats: [B, N, 4, 4], each token's matrix (its last two dims contiguous).
        cos, sin: [N, D/4] fp32, the camera rotary angles of the second half of a head.
        inverse_rope: rotate by the negative angle (decoding an output).
        downscale: shrink each head vector to at most the RMS of the input's.
        inflation: also return (max(|out|, 1e-6) / max(|x|, 1e-6))^2 [B, N, H, 1] in fp32.
        config: the launch shape (default: `default_config`).

    Returns:
        [B, N, H, D] contiguous in x's dtype (and the inflation); all arithmetic in fp32, rounded once.
    """
    name = "ucpe"
    if x.dim() != 4 or x.shape[-1] % 8:
        raise ValueError(f"{name}: x must be [B, N, H, D] with D a multiple of 8, got {tuple(x.shape)}")
    b, n, h, d = x.shape
    if tuple(mats.shape) != (b, n, 4, 4) or mats.stride(-1) != 1 or mats.stride(-2) != 4:
        raise ValueError(f"{name}: mats must be [{b}, {n}, 4, 4] with contiguous 4x4 matrices, got "
                         f"{tuple(mats.shape)} strides {tuple(mats.stride())}")
    for arg, table in (("cos", cos), ("sin", sin)):
        if tuple(table.shape) != (n, d // 4) or table.dtype != torch.float32 or table.stride(-1) != 1:
            raise ValueError(f"{name}: {arg} must be fp32 [{n}, {d // 4}] with a contiguous last dim, got "
                             f"{table.dtype} {tuple(table.shape)}")
    if cos.stride(0) != sin.stride(0):
        raise ValueError(f"{name}: cos and sin must share their row stride")
    check_float(name, "x", x)
    check_float(name, "mats", mats)
    check_last_dim_contiguous(name, "x", x)
    check_device(name, x, mats, cos, sin)
    out = torch.empty((b, n, h, d), device=x.device, dtype=x.dtype)
    infl = torch.empty((b, n, h, 1), device=x.device, dtype=torch.float32) if inflation else out
    if out.numel():
        config = config or default_config(h)
        grid = (triton.cdiv(h, config.heads), triton.cdiv(n, config.rows), b)
        _ucpe_kernel[grid](
            x, mats, cos, sin, out, infl,
            n, h,
            x.stride(0), x.stride(1), x.stride(2), mats.stride(0), mats.stride(1), cos.stride(0),
            D=d, BLOCK_T=config.rows, BLOCK_G=triton.next_power_of_2(d // 8), BLOCK_P=triton.next_power_of_2(d // 4),
            HEADS=config.heads, INVERSE=inverse_rope, DOWNSCALE=downscale, INFLATION=inflation,
            num_warps=config.num_warps,
        )
    return (out, infl) if inflation else out
