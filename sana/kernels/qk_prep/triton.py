"""SANA-WM's query / key preparation (RMSNorm, ReLU, scale, RoPE) as one Triton pass.

diffusers runs the RMSNorm (statistics, rescale, casts, weight), the ReLU, the key scale and the rotation (an
fp32 copy, a complex product, a cast) as separate kernels: eight or more full passes over [B, N, C] for each of
q and k in every GDN block. Here a program takes one token row as a [heads, pairs] tile of even and odd channels,
computes the row's statistics, and writes the plain and the rotated heads once each, rounding where diffusers
rounds (so the plain form equals diffusers' bit for bit but for the rsqrt).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float, check_last_dim_contiguous


@triton.jit
def _qk_prep_kernel(
    x_ptr, w_ptr, cos_ptr, sin_ptr, plain_ptr, rot_ptr,
    N, H, eps, scale,
    stride_xb, stride_xn, stride_cn, stride_cp,
    D: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr,
    RELU: tl.constexpr, SCALE: tl.constexpr, ROPE: tl.constexpr, HALF_WEIGHT: tl.constexpr,
):
    row = tl.program_id(0)  # b * N + n
    b = row // N
    n = row % N
    heads = tl.arange(0, BLOCK_H)
    pairs = tl.arange(0, BLOCK_P)
    mask = (heads < H)[:, None] & (pairs < D // 2)[None, :]
    chan = heads[:, None] * D + 2 * pairs[None, :]  # the even channel of each pair
    x_row = x_ptr + b.to(tl.int64) * stride_xb + n.to(tl.int64) * stride_xn
    xe = tl.load(x_row + chan, mask=mask, other=0.0).to(tl.float32)
    xo = tl.load(x_row + chan + 1, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(tl.sum(xe * xe + xo * xo, axis=1), axis=0) / (H * D) + eps)
    we = tl.load(w_ptr + chan, mask=mask, other=0.0).to(tl.float32)
    wo = tl.load(w_ptr + chan + 1, mask=mask, other=0.0).to(tl.float32)
    dtype = plain_ptr.dtype.element_ty
    ye = xe * rstd
    yo = xo * rstd
    if HALF_WEIGHT:  # diffusers rounds the normalised value to the weight's dtype before the product
        ye = ye.to(w_ptr.dtype.element_ty).to(tl.float32)
        yo = yo.to(w_ptr.dtype.element_ty).to(tl.float32)
    ye = (ye * we).to(dtype).to(tl.float32)
    yo = (yo * wo).to(dtype).to(tl.float32)
    if RELU:
        ye = tl.maximum(ye, 0.0)
        yo = tl.maximum(yo, 0.0)
    if SCALE:
        ye = (ye * scale).to(dtype).to(tl.float32)
        yo = (yo * scale).to(dtype).to(tl.float32)
    out = row.to(tl.int64) * H * D + chan
    tl.store(plain_ptr + out, ye.to(dtype), mask=mask)
    tl.store(plain_ptr + out + 1, yo.to(dtype), mask=mask)
    if ROPE:
        angle = n.to(tl.int64) * stride_cn + pairs[None, :] * stride_cp
        c = tl.load(cos_ptr + angle, mask=(pairs < D // 2)[None, :], other=0.0)
        s = tl.load(sin_ptr + angle, mask=(pairs < D // 2)[None, :], other=0.0)
        tl.store(rot_ptr + out, (ye * c - yo * s).to(dtype), mask=mask)
        tl.store(rot_ptr + out + 1, (ye * s + yo * c).to(dtype), mask=mask)


def qk_prep(x: torch.Tensor, weight: torch.Tensor, eps: float, heads: int, *, relu: bool = True, scale: float = 1.0,
            cos: torch.Tensor | None = None, sin: torch.Tensor | None = None):
    """RMSNorm (full width) -> ReLU -> scale -> RoPE; the spec is `reference.qk_prep_reference`.

    Args:
        x: [B, N, C], C = heads * D with D even, last dim contiguous, any other strides (a view of a fused qkv).
        weight: [C], the RMSNorm weight. eps: its epsilon.
        relu, scale: the ReLU and the multiplier applied after the norm.
        cos, sin: fp32 [N, D/2] rotary angles (any strides, e.g. the two halves of `torch.view_as_real` of a
            complex table), or None for no rotated output.

    Returns:
        (plain, rotated or None), each [B, N, heads, D] contiguous in x's dtype.
    """
    name = "qk_prep"
    if x.dim() != 3 or x.shape[-1] % heads or (x.shape[-1] // heads) % 2:
        raise ValueError(f"{name}: x must be [B, N, heads * D] with D even, got {tuple(x.shape)} for {heads} heads")
    b, n, c = x.shape
    d = c // heads
    if tuple(weight.shape) != (c,) or not weight.is_contiguous():
        raise ValueError(f"{name}: weight must be a contiguous [{c}], got {tuple(weight.shape)}")
    rope = cos is not None
    if rope:
        for arg, table in (("cos", cos), ("sin", sin)):
            if table is None or tuple(table.shape) != (n, d // 2) or table.dtype != torch.float32:
                raise ValueError(f"{name}: {arg} must be fp32 [{n}, {d // 2}]")
        if cos.stride() != sin.stride():
            raise ValueError(f"{name}: cos and sin must share their strides")
    check_float(name, "x", x)
    check_float(name, "weight", weight)
    check_last_dim_contiguous(name, "x", x)
    check_device(name, x, weight, *((cos, sin) if rope else ()))
    plain = torch.empty((b, n, heads, d), device=x.device, dtype=x.dtype)
    rotated = torch.empty_like(plain) if rope else None
    if plain.numel():
        block_h, block_p = triton.next_power_of_2(heads), triton.next_power_of_2(d // 2)
        _qk_prep_kernel[(b * n,)](
            x, weight, cos if rope else plain, sin if rope else plain, plain, rotated if rope else plain,
            n, heads, eps, scale,
            x.stride(0), x.stride(1), cos.stride(0) if rope else 0, cos.stride(1) if rope else 0,
            D=d, BLOCK_H=block_h, BLOCK_P=block_p, RELU=relu, SCALE=scale != 1.0, ROPE=rope,
            HALF_WEIGHT=weight.dtype in (torch.float16, torch.bfloat16),
            num_warps=max(1, min(8, block_h * block_p // 256)),
        )
    return plain, rotated
