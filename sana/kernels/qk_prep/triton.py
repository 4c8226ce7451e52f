"""SANA-WM's query / key preparation (RMSNorm, ReLU, scale, RoPE) as one Triton pass.

diffusers runs the RMSNorm (statistics, rescale, casts, weight), the ReLU, the key scale and the rotation (an
fp32 copy, a complex product, a cast) as separate kernels: eight or more full passes over [B, N, C] for each of
q and k in every GDN block. Here a program loads whole token rows with contiguous (vectorised) loads, computes each
row's statistics, splits the rows into even and odd channels in registers for the rotation, and writes the plain
and the rotated heads once each with contiguous stores, rounding where diffusers rounds (so the plain form equals
diffusers' bit for bit but for the rsqrt). (A first version loaded the even and odd channels through stride-2
pointers and ran at 182 GB/s on an H200 at the WM shape.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float, check_last_dim_contiguous


@triton.jit
def _qk_prep_kernel(
    x_ptr, w_ptr, cos_ptr, sin_ptr, plain_ptr, rot_ptr,
    N, ROWS, eps, scale,
    stride_xb, stride_xn, stride_cn, stride_cp,
    C: tl.constexpr, D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
    RELU: tl.constexpr, SCALE: tl.constexpr, ROPE: tl.constexpr, HALF_WEIGHT: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # b * N + n
    row_ok = rows < ROWS
    b = (rows // N).to(tl.int64)
    n = rows % N
    chan = tl.arange(0, BLOCK_C)
    mask = row_ok[:, None] & (chan < C)[None, :]
    x = tl.load(x_ptr + (b * stride_xb + n.to(tl.int64) * stride_xn)[:, None] + chan[None, :], mask=mask,
                other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / C + eps)
    w = tl.load(w_ptr + chan, mask=chan < C, other=0.0).to(tl.float32)[None, :]
    dtype = plain_ptr.dtype.element_ty
    y = x * rstd[:, None]
    if HALF_WEIGHT:  # diffusers rounds the normalised value to the weight's dtype before the product
        y = y.to(w_ptr.dtype.element_ty).to(tl.float32)
    y = (y * w).to(dtype).to(tl.float32)
    if RELU:
        y = tl.maximum(y, 0.0)
    if SCALE:
        y = (y * scale).to(dtype).to(tl.float32)
    out = rows.to(tl.int64)[:, None] * C + chan[None, :]
    tl.store(plain_ptr + out, y.to(dtype), mask=mask)
    if ROPE:
        # Pair j holds channels (2j, 2j+1) of the row; its angle is that of pair j mod D/2 of the head.
        ye, yo = tl.split(tl.reshape(y, (BLOCK_T, BLOCK_C // 2, 2)))
        pair = tl.arange(0, BLOCK_C // 2)
        p_mask = row_ok[:, None] & (pair < C // 2)[None, :]
        angle = n.to(tl.int64)[:, None] * stride_cn + ((pair % (D // 2)) * stride_cp)[None, :]
        c = tl.load(cos_ptr + angle, mask=p_mask, other=0.0)
        s = tl.load(sin_ptr + angle, mask=p_mask, other=0.0)
        rotated = tl.reshape(tl.join(ye * c - yo * s, ye * s + yo * c), (BLOCK_T, BLOCK_C))
        tl.store(rot_ptr + out, rotated.to(dtype), mask=mask)


@dataclass(frozen=True)
class Config:
    """A launch shape: token rows a program and warps."""

    rows: int
    num_warps: int


def default_config() -> Config:
    """One row a program, four warps: the fastest of the sweep at the WM shape on an H200 (3.1 TB/s)."""
    return Config(1, 4)


def qk_prep(x: torch.Tensor, weight: torch.Tensor, eps: float, heads: int, *, relu: bool = True, scale: float = 1.0,
            cos: torch.Tensor | None = None, sin: torch.Tensor | None = None, config: Config | None = None):
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
        config = config or default_config()
        _qk_prep_kernel[(triton.cdiv(b * n, config.rows),)](
            x, weight, cos if rope else plain, sin if rope else plain, plain, rotated if rope else plain,
            n, b * n, eps, scale,
            x.stride(0), x.stride(1), cos.stride(0) if rope else 0, cos.stride(1) if rope else 0,
            C=c, D=d, BLOCK_T=config.rows, BLOCK_C=triton.next_power_of_2(c), RELU=relu, SCALE=scale != 1.0,
            ROPE=rope, HALF_WEIGHT=weight.dtype in (torch.float16, torch.bfloat16), num_warps=config.num_warps,
        )
    return plain, rotated
