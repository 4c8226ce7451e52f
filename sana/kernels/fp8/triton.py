"""fp8 row quantization as a Triton row kernel, and the fp8 linear: quantize, then one `torch._scaled_mm`.

The quantizer is memory-bound: each row is read once (2 bytes an element in bf16) and written once (1 byte) with
its scale; amax and the scaling stay in registers. The GEMM is cuBLAS's fp8 kernel with rowwise scales and the
bias in its epilogue (Hopper and Ada: compute capability 8.9+), about 1.5x the bf16 GEMM's throughput on an H100.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float, check_last_dim_contiguous
from .reference import AMAX_FLOOR, FP8_DTYPE, FP8_MAX

# The reference's constants as compile-time constants of the kernel.
_FP8_MAX = tl.constexpr(FP8_MAX)
_AMAX_FLOOR = tl.constexpr(AMAX_FLOOR)
# -- kernel -------------------------------------------------------------------------------------------------


@triton.jit
def _quantize_fp8_rows_kernel(
    x_ptr, q_ptr, scale_ptr,
    ROWS, K, stride_x, stride_q,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < ROWS
    mask = row_ok[:, None] & (cols < K)[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x), axis=1), _AMAX_FLOOR)  # [BLOCK_R]
    # IEEE divisions (Triton's `/` is approximate): the same scales, bit for bit, as the reference.
    inv = tl.div_rn(tl.full(amax.shape, _FP8_MAX, tl.float32), amax)
    q = (x * inv[:, None]).to(tl.float8e4nv)
    tl.store(q_ptr + rows64[:, None] * stride_q + cols[None, :], q, mask=mask)
    tl.store(scale_ptr + rows, tl.div_rn(amax, tl.full(amax.shape, _FP8_MAX, tl.float32)), mask=row_ok)


# -- launcher -----------------------------------------------------------------------------------------------

_MAX_K = 16384


def _config(k: int) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_K, warps): whole rows, about 8K elements a program."""
    block_k = triton.next_power_of_2(k)
    block_r = max(1, 8192 // block_k)
    warps = min(16, max(1, block_r * block_k // 1024))
    return block_r, block_k, warps


# -- public functions ---------------------------------------------------------------------------------------


def quantize_fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] -> (q [..., K] float8_e4m3fn contiguous, scale [...] float32), spec:
    `reference.quantize_fp8_rows_reference` (scale = amax / 448, q = round(x * 448 / amax))."""
    name = "quantize_fp8_rows"
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{name}: x must be [..., K] with K > 0, got {tuple(x.shape)}")
    check_float(name, "x", x)
    check_last_dim_contiguous(name, "x", x)
    check_device(name, x)
    k = x.shape[-1]
    if k > _MAX_K:
        raise ValueError(f"{name}: K={k} > {_MAX_K} does not fit one row block")
    rows = x.numel() // k
    x2 = x.reshape(rows, k)  # a view whenever the rows are evenly strided
    q = torch.empty((rows, k), device=x.device, dtype=FP8_DTYPE)
    scale = torch.empty(rows, device=x.device, dtype=torch.float32)
    if rows:
        block_r, block_k, warps = _config(k)
        _quantize_fp8_rows_kernel[(triton.cdiv(rows, block_r),)](
            x2, q, scale, rows, k, x2.stride(0), q.stride(0),
            BLOCK_R=block_r, BLOCK_K=block_k, num_warps=warps,
        )
    return q.reshape(x.shape), scale.reshape(x.shape[:-1])


def fp8_linear(x: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor,
               bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., K] bf16 -> [..., N] bf16: x quantized per row by the kernel above, then cuBLAS's fp8 GEMM with
    rowwise scales and the bias in its epilogue. Spec: `reference.fp8_linear_reference`.

    weight_fp8 [N, K] float8_e4m3fn (rows contiguous, so its transpose is the column-major operand cuBLAS
    wants), weight_scale [N] float32, bias [N] bf16 or None. K and N must be multiples of 16.
    """
    name = "fp8_linear"
    if x.dtype != torch.bfloat16:
        raise ValueError(f"{name}: x must be bfloat16 (cuBLAS's rowwise fp8 GEMM writes bf16), got {x.dtype}")
    n, k = weight_fp8.shape
    if x.shape[-1] != k or weight_fp8.dtype != FP8_DTYPE or tuple(weight_scale.shape) != (n,):
        raise ValueError(f"{name}: x [..., {x.shape[-1]}] does not fit weight {tuple(weight_fp8.shape)} "
                         f"{weight_fp8.dtype} with scale {tuple(weight_scale.shape)}")
    if k % 16 or n % 16:
        raise ValueError(f"{name}: K={k} and N={n} must be multiples of 16")
    q, scale = quantize_fp8_rows(x)
    return fp8_linear_quantized(q, scale, weight_fp8, weight_scale, bias)


def fp8_linear_quantized(q: torch.Tensor, scale: torch.Tensor, weight_fp8: torch.Tensor, weight_scale: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    """`fp8_linear`'s GEMM for activations already quantized per row (q [..., K] float8_e4m3fn with its rows
    contiguous, scale [...] fp32, as `quantize_fp8_rows` or a norm kernel's fp8 form writes them) -> [..., N] bf16.
    Spec: `reference.fp8_linear_quantized_reference`."""
    name = "fp8_linear_quantized"
    n, k = weight_fp8.shape
    if q.dtype != FP8_DTYPE or q.shape[-1] != k or tuple(scale.shape) != tuple(q.shape[:-1]):
        raise ValueError(f"{name}: q {tuple(q.shape)} {q.dtype} with scale {tuple(scale.shape)} does not fit "
                         f"weight {tuple(weight_fp8.shape)}")
    if k % 16 or n % 16:
        raise ValueError(f"{name}: K={k} and N={n} must be multiples of 16")
    y = torch._scaled_mm(q.reshape(-1, k), weight_fp8.t(), scale_a=scale.reshape(-1, 1),
                         scale_b=weight_scale.reshape(1, n), bias=bias, out_dtype=torch.bfloat16)
    return y.reshape(*q.shape[:-1], n)
