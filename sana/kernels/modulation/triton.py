"""LayerNorm + adaLN modulation as Triton row kernels, one program per token row of C channels.

Both kernels are memory-bound: x (and y) are read once, the statistics stay in registers, and the
modulated row is written once in x's dtype. All arithmetic is fp32.

The `_fp8` forms write the modulated row as the fp8 GEMM that reads it wants it instead: rounded to x's dtype
(the value the plain form writes), then quantized per row as `sana.kernels.fp8` does (amax -> 448), with the
row's scale. That saves the fp8 linear's separate quantizer pass, which read the row back from memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float, check_last_dim_contiguous
from ..fp8.reference import AMAX_FLOOR, FP8_DTYPE, FP8_MAX
from .reference import EPS

_FP8_MAX = tl.constexpr(FP8_MAX)
_AMAX_FLOOR = tl.constexpr(AMAX_FLOOR)

# -- kernels ------------------------------------------------------------------------------------------------


@triton.jit
def _modulate_row(r, mask, shift_row_ptr, scale_row_ptr, offs, C, eps):
    """fp32 row r [BLOCK_C] (zeros where ~mask) -> LN(r) * (1 + scale) + shift, in fp32."""
    mean = tl.sum(r, axis=0) / C
    centred = tl.where(mask, r - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(centred * centred, axis=0) / C + eps)  # biased variance, as nn.LayerNorm
    shift = tl.load(shift_row_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_row_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return centred * rstd * (1.0 + scale) + shift


@triton.jit
def _store_row(out, mask, out_ptr, qscale_ptr, row, ROUND_TY: tl.constexpr, FP8: tl.constexpr):
    """Write fp32 row `out` at out_ptr: in out's dtype, or (FP8) rounded to ROUND_TY, quantized to fp8 with the
    row's scale at qscale_ptr[row] (`sana.kernels.fp8.reference.quantize_fp8_rows_reference` of the rounded row)."""
    if FP8:
        h = out.to(ROUND_TY).to(tl.float32)
        amax = tl.maximum(tl.max(tl.where(mask, tl.abs(h), 0.0), axis=0, keep_dims=True), _AMAX_FLOOR)  # [1]
        # IEEE divisions, as the row quantizer: the same scales, bit for bit.
        fp8_max = tl.full(amax.shape, _FP8_MAX, tl.float32)
        tl.store(out_ptr, (h * tl.div_rn(fp8_max, amax)).to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(qscale_ptr + row + tl.arange(0, 1), tl.div_rn(amax, fp8_max))
    else:
        tl.store(out_ptr, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _modulated_layer_norm_kernel(
    x_ptr, shift_ptr, scale_ptr, out_ptr, qscale_ptr,
    N, C, eps,
    stride_xb, stride_xn, stride_shift, stride_scale, stride_ob, stride_on,
    BLOCK_C: tl.constexpr, FP8: tl.constexpr,
):
    row = tl.program_id(0)
    b = row // N
    n = row % N
    offs = tl.arange(0, BLOCK_C)
    mask = offs < C
    x = tl.load(x_ptr + b.to(tl.int64) * stride_xb + n.to(tl.int64) * stride_xn + offs, mask=mask, other=0.0)
    out = _modulate_row(x.to(tl.float32), mask, shift_ptr + b * stride_shift, scale_ptr + b * stride_scale,
                        offs, C, eps)
    _store_row(out, mask, out_ptr + b.to(tl.int64) * stride_ob + n.to(tl.int64) * stride_on + offs, qscale_ptr,
               row, x_ptr.dtype.element_ty, FP8)


@triton.jit
def _gated_residual_modulated_norm_kernel(
    x_ptr, gate_ptr, y_ptr, y2_ptr, shift_ptr, scale_ptr, res_ptr, out_ptr, qscale_ptr,
    N, C, eps,
    stride_xb, stride_xn, stride_gate, stride_yb, stride_yn, stride_y2b, stride_y2n, stride_shift, stride_scale,
    stride_ob, stride_on,
    BLOCK_C: tl.constexpr, HAS_Y2: tl.constexpr, HAS_GATE: tl.constexpr, FP8: tl.constexpr,
):
    row = tl.program_id(0)
    b = row // N
    n = row % N
    offs = tl.arange(0, BLOCK_C)
    mask = offs < C
    x = tl.load(x_ptr + b.to(tl.int64) * stride_xb + n.to(tl.int64) * stride_xn + offs, mask=mask, other=0.0)
    y = tl.load(y_ptr + b.to(tl.int64) * stride_yb + n.to(tl.int64) * stride_yn + offs, mask=mask, other=0.0)
    y = y.to(tl.float32)
    if HAS_Y2:  # a second branch term: x + gate * (y + y2)
        y2 = tl.load(y2_ptr + b.to(tl.int64) * stride_y2b + n.to(tl.int64) * stride_y2n + offs, mask=mask, other=0.0)
        y += y2.to(tl.float32)
    if HAS_GATE:
        gate = tl.load(gate_ptr + b * stride_gate + offs, mask=mask, other=0.0)
        y = gate.to(tl.float32) * y
    r = (x.to(tl.float32) + y).to(res_ptr.dtype.element_ty)
    out_row = b.to(tl.int64) * stride_ob + n.to(tl.int64) * stride_on + offs
    tl.store(res_ptr + out_row, r, mask=mask)
    # Normalise the rounded residual, the value the next op would read back from memory.
    out = _modulate_row(r.to(tl.float32), mask, shift_ptr + b * stride_shift, scale_ptr + b * stride_scale,
                        offs, C, eps)
    _store_row(out, mask, out_ptr + out_row, qscale_ptr, row, x_ptr.dtype.element_ty, FP8)


@triton.jit
def _gated_residual_kernel(
    x_ptr, gate_ptr, y_ptr, y2_ptr, out_ptr,
    N, C,
    stride_xb, stride_xn, stride_gate, stride_yb, stride_yn, stride_y2b, stride_y2n, stride_ob, stride_on,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, HAS_Y2: tl.constexpr,
):
    b = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    mask = (rows < N)[:, None] & col_ok[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    x = tl.load(x_ptr + b.to(tl.int64) * stride_xb + rows64 * stride_xn + cols[None, :], mask=mask, other=0.0)
    y = tl.load(y_ptr + b.to(tl.int64) * stride_yb + rows64 * stride_yn + cols[None, :], mask=mask, other=0.0)
    y = y.to(tl.float32)
    if HAS_Y2:  # a second branch term: x + gate * (y + y2)
        y2 = tl.load(y2_ptr + b.to(tl.int64) * stride_y2b + rows64 * stride_y2n + cols[None, :], mask=mask, other=0.0)
        y += y2.to(tl.float32)
    gate = tl.load(gate_ptr + b * stride_gate + cols, mask=col_ok, other=0.0).to(tl.float32)
    out = x.to(tl.float32) + gate[None, :] * y
    tl.store(out_ptr + b.to(tl.int64) * stride_ob + rows64 * stride_on + cols[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mask)


# -- launchers ----------------------------------------------------------------------------------------------


def _row_config(c: int) -> tuple[int, int]:
    """(BLOCK_C, warps): the whole row in one block, about 16 bytes of each input per thread."""
    block_c = triton.next_power_of_2(c)
    return block_c, min(16, max(1, block_c // 256))


def _launch_modulated_layer_norm(x, shift, scale, out, eps, qscale=None):
    b, n, c = x.shape
    block_c, warps = _row_config(c)
    _modulated_layer_norm_kernel[(b * n,)](
        x, shift, scale, out, out if qscale is None else qscale,
        n, c, eps,
        x.stride(0), x.stride(1), shift.stride(0), scale.stride(0), out.stride(0), out.stride(1),
        BLOCK_C=block_c, FP8=qscale is not None, num_warps=warps,
    )


def _launch_gated_residual_modulated_norm(x, gate, y, y2, shift, scale, res, out, eps, qscale=None):
    b, n, c = x.shape
    block_c, warps = _row_config(c)
    second = y2 if y2 is not None else y
    gated = gate if gate is not None else shift  # no gate (1): the kernel never reads it
    _gated_residual_modulated_norm_kernel[(b * n,)](
        x, gated, y, second, shift, scale, res, out, out if qscale is None else qscale,
        n, c, eps,
        x.stride(0), x.stride(1), gated.stride(0), y.stride(0), y.stride(1), second.stride(0), second.stride(1),
        shift.stride(0), scale.stride(0), out.stride(0), out.stride(1),
        BLOCK_C=block_c, HAS_Y2=y2 is not None, HAS_GATE=gate is not None, FP8=qscale is not None, num_warps=warps,
    )


_RESIDUAL_BLOCK_N = 8
_RESIDUAL_BLOCK_C = 512


def _launch_gated_residual(x, gate, y, y2, out):
    b, n, c = x.shape
    grid = (triton.cdiv(n, _RESIDUAL_BLOCK_N), b, triton.cdiv(c, _RESIDUAL_BLOCK_C))
    second = y2 if y2 is not None else y
    _gated_residual_kernel[grid](
        x, gate, y, second, out,
        n, c,
        x.stride(0), x.stride(1), gate.stride(0), y.stride(0), y.stride(1), second.stride(0), second.stride(1),
        out.stride(0), out.stride(1),
        BLOCK_N=_RESIDUAL_BLOCK_N, BLOCK_C=_RESIDUAL_BLOCK_C, HAS_Y2=y2 is not None, num_warps=4,
    )


# -- public functions ---------------------------------------------------------------------------------------

_MAX_C = 16384


def _check_x(name: str, arg: str, x: torch.Tensor) -> None:
    if x.dim() != 3:
        raise ValueError(f"{name}: {arg} must be [B, N, C], got {tuple(x.shape)}")
    check_float(name, arg, x)
    check_last_dim_contiguous(name, arg, x)
    if x.shape[-1] > _MAX_C:
        raise ValueError(f"{name}: C={x.shape[-1]} > {_MAX_C} does not fit one row block")


def _per_batch(name: str, arg: str, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Accept [B, C] or [B, 1, C] (a chunk of the [B, 6, C] modulation table); return a [B, C] view."""
    b, c = x.shape[0], x.shape[-1]
    if t.dim() == 3 and t.shape[1] == 1:
        t = t[:, 0]
    if tuple(t.shape) != (b, c):
        raise ValueError(f"{name}: {arg} must be [B, C] = [{b}, {c}] (or [B, 1, C]), got {tuple(t.shape)}")
    check_float(name, arg, t)
    check_last_dim_contiguous(name, arg, t)
    return t


def _check_residual_args(name: str, x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Check x, y [B, N, C] alike and the per-batch gate; return the gate as a [B, C] view."""
    _check_x(name, "x", x)
    _check_x(name, "y", y)
    if y.shape != x.shape:
        raise ValueError(f"{name}: y must match x {tuple(x.shape)}, got {tuple(y.shape)}")
    return _per_batch(name, "gate", gate, x)


def modulated_layer_norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """LayerNorm without affine, then adaLN modulation, fused; spec: `reference.modulated_layer_norm_reference`.

    Args:
        x: [B, N, C], last dim contiguous.
        shift, scale: [B, C] or [B, 1, C], any float dtype (fp32 when diffusers' table is fp32), broadcast over N.
        eps: LayerNorm epsilon (SANA: 1e-6).

    Returns:
        [B, N, C] contiguous in x's dtype: (x - mean) * rsqrt(var + eps) * (1 + scale) + shift, statistics and
        modulation in fp32, rounded once.
    """
    name = "modulated_layer_norm"
    _check_x(name, "x", x)
    shift = _per_batch(name, "shift", shift, x)
    scale = _per_batch(name, "scale", scale, x)
    check_device(name, x, shift, scale)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if out.numel():
        _launch_modulated_layer_norm(x, shift, scale, out, eps)
    return out


def _residual_norm_args(name: str, x: torch.Tensor, gate: torch.Tensor | None, y: torch.Tensor,
                        y2: torch.Tensor | None, shift: torch.Tensor,
                        scale: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The residual-and-norm kernels' arguments checked: (gate or None, shift, scale) as the launch takes them."""
    if y2 is not None and gate is None:
        raise ValueError(f"{name}: a second branch term y2 needs a gate")
    checked = _check_residual_args(name, x, shift if gate is None else gate, y)
    gate = None if gate is None else checked
    if y2 is not None:
        _check_residual_args(name, x, gate, y2)
    shift = _per_batch(name, "shift", shift, x)
    scale = _per_batch(name, "scale", scale, x)
    check_device(name, x, y, shift, scale, *(() if gate is None else (gate,)), *(() if y2 is None else (y2,)))
    return gate, shift, scale


def gated_residual_modulated_norm(x: torch.Tensor, gate: torch.Tensor | None, y: torch.Tensor, shift: torch.Tensor,
                                  scale: torch.Tensor, eps: float = EPS,
                                  y2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated residual add fused with the next modulated LayerNorm.

    Spec: `reference.gated_residual_modulated_norm_reference`. Saves writing the residual and reading it
    back for the norm (SANA: `x + gate_mlp * ff` followed by the next block's norm1 modulation).

    Args:
        x, y: [B, N, C] (residual stream and branch output), last dim contiguous; y may have another dtype.
        gate, shift, scale: [B, C] or [B, 1, C], any float dtype, broadcast over N; gate None: 1 (x + y, the
            cross-attention's residual), never read.
        eps: LayerNorm epsilon (SANA: 1e-6).
        y2: None, or a second branch term like y: r = x + gate * (y + y2), the sum never written (SANA-Video's
            Mix-FFN output and its temporal conv, followed by the next block's norm1 modulation).

    Returns:
        (r, m), both [B, N, C] contiguous in x's dtype: r = x + gate * y (fp32 math, rounded once) and
        m = LN(r) * (1 + scale) + shift computed from the rounded r.
    """
    gate, shift, scale = _residual_norm_args("gated_residual_modulated_norm", x, gate, y, y2, shift, scale)
    res = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if out.numel():
        _launch_gated_residual_modulated_norm(x, gate, y, y2, shift, scale, res, out, eps)
    return res, out


def modulated_layer_norm_fp8(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                             eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """`modulated_layer_norm`, written as an fp8 GEMM's input: (q [B, N, C] float8_e4m3fn, row scales [B, N] fp32),
    the modulated row rounded to x's dtype and then quantized per row. Spec: `reference.quantize_fp8_rows_reference`
    of `reference.modulated_layer_norm_reference`."""
    name = "modulated_layer_norm_fp8"
    _check_x(name, "x", x)
    shift = _per_batch(name, "shift", shift, x)
    scale = _per_batch(name, "scale", scale, x)
    check_device(name, x, shift, scale)
    q = torch.empty(x.shape, device=x.device, dtype=FP8_DTYPE)
    row_scale = torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32)
    if q.numel():
        _launch_modulated_layer_norm(x, shift, scale, q, eps, qscale=row_scale)
    return q, row_scale


def gated_residual_modulated_norm_fp8(x: torch.Tensor, gate: torch.Tensor | None, y: torch.Tensor, shift: torch.Tensor,
                                      scale: torch.Tensor, eps: float = EPS, y2: torch.Tensor | None = None,
                                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`gated_residual_modulated_norm` (y2 as there) with the modulated row written as an fp8 GEMM's input: (r
    [B, N, C] in x's dtype, q [B, N, C] float8_e4m3fn, row scales [B, N] fp32). Spec: the reference pair, its
    second output quantized by `quantize_fp8_rows_reference`."""
    gate, shift, scale = _residual_norm_args("gated_residual_modulated_norm_fp8", x, gate, y, y2, shift, scale)
    res = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    q = torch.empty(x.shape, device=x.device, dtype=FP8_DTYPE)
    row_scale = torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32)
    if q.numel():
        _launch_gated_residual_modulated_norm(x, gate, y, y2, shift, scale, res, q, eps, qscale=row_scale)
    return res, q, row_scale


def gated_residual(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor, y2: torch.Tensor | None = None) -> torch.Tensor:
    """x + gate * y (or x + gate * (y + y2)) for a per-batch gate, in one pass; spec:
    `reference.gated_residual_reference`.

    PyTorch's addcmul takes a slow strided path for the broadcast gate; this reads x and y once with 16-byte
    vectors and writes once.

    Args:
        x, y: [B, N, C], last dim contiguous; y may have another dtype.
        gate: [B, C] or [B, 1, C], any float dtype, broadcast over N.
        y2: None, or a second branch term like y (SANA-Video's temporal conv beside the Mix-FFN output it is
            added to: the sum is never written).

    Returns:
        [B, N, C] contiguous in x's dtype, fp32 math rounded once.
    """
    name = "gated_residual"
    gate = _check_residual_args(name, x, gate, y)
    if y2 is not None:
        _check_residual_args(name, x, gate, y2)
    check_device(name, x, gate, y, *(() if y2 is None else (y2,)))
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if out.numel():
        _launch_gated_residual(x, gate, y, y2, out)
    return out
