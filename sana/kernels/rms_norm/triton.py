"""RMSNorm with weight and bias (+ residual) as a Triton row kernel: one program per block of token rows.

Memory-bound: x (and the residual) are read once, the mean square stays in registers and the output is written
once in x's dtype. In the DC-AE decoder this replaces five passes over full-resolution activations (an fp32
square, the mean, the scaling, the affine, the residual add) with one.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float, check_last_dim_contiguous
from .reference import EPS

# -- kernel -------------------------------------------------------------------------------------------------


@triton.jit
def _rms_norm_affine_kernel(
    x_ptr, w_ptr, b_ptr, res_ptr, out_ptr,
    ROWS, C, eps,
    stride_x, stride_res, stride_out,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    row_ok = rows < ROWS
    col_ok = cols < C
    mask = row_ok[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    rstd = tl.rsqrt(tl.sum(x * x, axis=1) / C + eps)  # [BLOCK_R]
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    out = x * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        out += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_RESIDUAL:
        out += tl.load(res_ptr + rows64[:, None] * stride_res + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows64[:, None] * stride_out + cols[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


# -- launcher -----------------------------------------------------------------------------------------------

_MAX_C = 16384


def _config(c: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_C, warps): whole rows, about 4K elements a program, so narrow rows (128 channels at full
    resolution) still give each thread a 16-byte vector."""
    block_c = triton.next_power_of_2(c)
    block_r = max(1, 4096 // block_c)
    warps = min(16, max(1, block_r * block_c // 512))
    return block_r, block_c, warps


def _launch(x, weight, bias, residual, out, eps):
    c = x.shape[-1]
    rows = x.numel() // c
    block_r, block_c, warps = _config(c)
    res = residual if residual is not None else x
    _rms_norm_affine_kernel[(triton.cdiv(rows, block_r),)](
        x, weight, bias if bias is not None else weight, res, out,
        rows, c, eps,
        x.stride(-2), res.stride(-2), out.stride(-2),
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )


# -- public function ----------------------------------------------------------------------------------------


def _rows_view(name: str, arg: str, t: torch.Tensor) -> torch.Tensor:
    """t [..., C] as [rows, C] without a copy: its rows must be evenly strided (e.g. channels-last images)."""
    check_float(name, arg, t)
    check_last_dim_contiguous(name, arg, t)
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        raise ValueError(f"{name}: {arg}'s rows must be evenly strided, got strides {tuple(t.stride())}") from None


def rms_norm_affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = EPS,
                    residual: torch.Tensor | None = None) -> torch.Tensor:
    """RMSNorm over the last dim with a weight and optional bias, plus an optional residual, fused.

    Spec: `reference.rms_norm_affine_reference`.

    Args:
        x: [..., C], last dim contiguous, rows evenly strided (a token view of a channels-last image is).
        weight, bias: [C], any float dtype; bias may be None (the DiT's q/k norms).
        residual: None or x's shape, the same layout rules; added after the affine.

    Returns:
        [..., C] contiguous in x's dtype: x * rsqrt(mean(x^2) + eps) * weight + bias (+ residual), fp32 math,
        rounded once.
    """
    name = "rms_norm_affine"
    if x.dim() < 1 or x.shape[-1] > _MAX_C:
        raise ValueError(f"{name}: x must be [..., C] with C <= {_MAX_C}, got {tuple(x.shape)}")
    c = x.shape[-1]
    x2 = _rows_view(name, "x", x)
    for arg, t in (("weight", weight), ("bias", bias)):
        if t is None and arg == "bias":
            continue
        if tuple(t.shape) != (c,):
            raise ValueError(f"{name}: {arg} must be [{c}], got {tuple(t.shape)}")
        check_float(name, arg, t)
    res2 = None
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(f"{name}: residual must match x {tuple(x.shape)}, got {tuple(residual.shape)}")
        res2 = _rows_view(name, "residual", residual)
    check_device(name, *(t for t in (x, weight, bias, residual) if t is not None))
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if out.numel():
        _launch(x2, weight.contiguous(), bias.contiguous() if bias is not None else None, res2, out.view(-1, c), eps)
    return out
