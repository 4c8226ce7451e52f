"""A linear with the DiT block's gated residual in its epilogue, as one Triton GEMM.

out = x + gate * (h W^T + bias): a program computes a [BLOCK_M tokens, BLOCK_N channels] tile of h W^T in fp32,
adds the bias, multiplies by the gate row of the tile's batch element, adds the residual tile and rounds once.
Against cuBLAS's linear and the gated-residual pass after it, the linear's output is never written and read back
(two passes of [B, N, D] fewer). It pays only where the GEMM itself keeps up with cuBLAS at these shapes
(`bench.py --sweep`), so the model uses it only where it is switched on (`ops.set_linear_residual_kernel`).

Two forms: plain pointers (any GPU, and Triton's interpreter), and tiles through tensor descriptors (Hopper's TMA),
optionally persistent (one program per SM walking the tiles) with warp specialization where Triton offers it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float, check_last_dim_contiguous, interpreting
from .._gemm import TL_DTYPES, accumulate_k, grouped_tile
from .._gemm import LaunchShape as GemmLaunch


@dataclass(frozen=True)
class LaunchShape(GemmLaunch):
    persistent: bool = False  # one program per SM walking the tiles (descriptor form only)
    warp_specialize: bool = False  # loads and MMAs in warps of their own (descriptor form, persistent)


# Hopper (compute capability 9+) takes the sweep's winners (`bench.py --sweep`, H100, 2026-12-06, bf16): 128 x 256
# tiles through descriptors, persistent, from 8192 token rows (2048 px and up), 128 x 128 below; other cards the
# first candidate below. Even these reach only 0.84-0.91x cuBLAS's GEMM at 4096 px and 0.6x at 1024 px.
HOPPER_LAUNCH = LaunchShape(block_n=256, stages=3, tma=True, persistent=True)
HOPPER_LAUNCH_FEW_ROWS = LaunchShape(stages=4, tma=True)

# Candidates for a sweep on a GPU.
LAUNCH_SHAPES = (
    LaunchShape(),
    LaunchShape(block_n=256, stages=3),
    LaunchShape(block_n=256, stages=3, tma=True),
    LaunchShape(block_m=256, block_n=128, stages=3, tma=True),
    LaunchShape(stages=4, tma=True),
    LaunchShape(block_k=128, stages=3, tma=True),
    LaunchShape(block_m=64, block_n=256, warps=4, stages=4, tma=True),
    LaunchShape(block_n=64, warps=4, stages=5, tma=True),
    LaunchShape(block_n=256, stages=3, tma=True, persistent=True),
    LaunchShape(block_n=256, stages=3, tma=True, persistent=True, warp_specialize=True),
    LaunchShape(stages=4, tma=True, persistent=True),
    LaunchShape(stages=4, tma=True, persistent=True, warp_specialize=True),
    LaunchShape(block_n=256, group_m=16, stages=3, tma=True, persistent=True),
)


@triton.jit
def _bias_and_gate(acc, rows, cols, M, D, L, bias_ptr, gate_ptr, stride_gb,
                   HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr, ONE_BATCH: tl.constexpr):
    """(acc + bias) * gate in fp32; the gate row is the batch element of each token row (row // L)."""
    col_ok = cols < D
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_GATE:
        if ONE_BATCH:  # L is a multiple of BLOCK_M: the whole tile is one batch element
            batch = tl.min(rows, axis=0) // L
            gate = tl.load(gate_ptr + batch.to(tl.int64) * stride_gb + cols, mask=col_ok, other=0.0)
            acc *= gate.to(tl.float32)[None, :]
        else:
            batch = (rows // L).to(tl.int64)
            mask = (rows < M)[:, None] & col_ok[None, :]
            acc *= tl.load(gate_ptr + batch[:, None] * stride_gb + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _linear_residual_kernel(
    h_ptr, w_ptr, bias_ptr, x_ptr, gate_ptr, out_ptr,
    M, K, D, L,
    stride_hm, stride_wd, stride_xm, stride_gb, stride_om,
    HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr, ONE_BATCH: tl.constexpr, EVEN_K: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    """Program p: out[rows, cols] for BLOCK_M token rows (of all B * N) and BLOCK_N output channels."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, D, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    row_ok, col_ok = rows < M, cols < D
    a_ptrs = h_ptr + rows[:, None].to(tl.int64) * stride_hm + ks[None, :]  # [BLOCK_M, BLOCK_K]
    w_ptrs = w_ptr + cols[None, :].to(tl.int64) * stride_wd + ks[:, None]  # [BLOCK_K, BLOCK_N]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = accumulate_k(acc, a_ptrs, w_ptrs, row_ok, col_ok, K, EVEN_K, PRECISION, BLOCK_K)

    acc = _bias_and_gate(acc, rows, cols, M, D, L, bias_ptr, gate_ptr, stride_gb, HAS_BIAS, HAS_GATE, ONE_BATCH)
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_xm + cols[None, :], mask=mask, other=0.0)
    out = (x.to(tl.float32) + acc).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_om + cols[None, :], out, mask=mask)


@triton.jit
def _linear_residual_tma_kernel(
    h_desc, w_desc, x_desc, out_desc, bias_ptr, gate_ptr,
    M, K, D, L, stride_gb, PROGRAMS,
    HAS_BIAS: tl.constexpr, HAS_GATE: tl.constexpr, ONE_BATCH: tl.constexpr, OUT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):
    """`_linear_residual_kernel` through descriptors over h [M, K], W [D, K], x and out [M, D] (the tails are
    the descriptors' zero fill and clipped stores). Program p takes tiles p, p + PROGRAMS, ... (one tile each
    when PROGRAMS is the tile count)."""
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(D, BLOCK_N)
    for tile in tl.range(tl.program_id(0), tiles, PROGRAMS, warp_specialize=WARP_SPECIALIZE):
        pid_m, pid_n = grouped_tile(tile, M, D, BLOCK_M, BLOCK_N, GROUP_M)
        m0 = pid_m * BLOCK_M
        n0 = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            a = h_desc.load([m0, k0])
            w = w_desc.load([n0, k0])
            acc = tl.dot(a, w.T, acc, input_precision=PRECISION)
        rows = m0 + tl.arange(0, BLOCK_M)
        cols = n0 + tl.arange(0, BLOCK_N)
        acc = _bias_and_gate(acc, rows, cols, M, D, L, bias_ptr, gate_ptr, stride_gb, HAS_BIAS, HAS_GATE, ONE_BATCH)
        x = x_desc.load([m0, n0])
        out_desc.store([m0, n0], (x.to(tl.float32) + acc).to(OUT_DTYPE))


def linear_gated_residual(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor,
                          gate: torch.Tensor | None, *, launch: LaunchShape | None = None) -> torch.Tensor:
    """x + gate * (h W^T + bias) in one GEMM; the spec is `reference.linear_gated_residual_reference`.

    Args:
        h: [B, N, K] (rows may be strided; the last dim contiguous).
        weight: [D, K] (a linear's weight, contiguous), in h's dtype.
        bias: [D] or None.
        x: [B, N, D], the residual stream (last dim contiguous).
        gate: [B, 1, D] (any batch stride, channels contiguous) or None for 1.
        launch: the tile shape (default on compute capability 9+: `HOPPER_LAUNCH` from 8192 token rows,
            `HOPPER_LAUNCH_FEW_ROWS` below; else `LAUNCH_SHAPES[0]`).

    Returns:
        [B, N, D] contiguous in x's dtype (a new tensor: x is left as it is).
    """
    name = "linear_gated_residual"
    if h.dim() != 3 or x.dim() != 3 or h.shape[:2] != x.shape[:2]:
        raise ValueError(f"{name}: h and x must be [B, N, K] and [B, N, D], got {tuple(h.shape)} and {tuple(x.shape)}")
    b, n, k = h.shape
    d = x.shape[2]
    if weight.shape != (d, k) or not weight.is_contiguous():
        raise ValueError(f"{name}: weight must be a contiguous [{d}, {k}], got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (d,):
        raise ValueError(f"{name}: bias must be [{d}], got {tuple(bias.shape)}")
    if gate is not None and (gate.shape != (b, 1, d) or gate.stride(2) != 1):
        raise ValueError(f"{name}: gate must be [{b}, 1, {d}] with contiguous channels, got {tuple(gate.shape)}")
    if weight.dtype != h.dtype:
        raise ValueError(f"{name}: weight must be in h's dtype {h.dtype}, got {weight.dtype}")
    for arg, t in (("h", h), ("x", x)):
        check_float(name, arg, t)
        check_last_dim_contiguous(name, arg, t)
    check_device(name, h, weight, x, *(t for t in (bias, gate) if t is not None))
    out = torch.empty((b, n, d), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    rows_h = h.reshape(b * n, k)  # a view for token-major activations; a copy only for odd strides
    rows_x = x.reshape(b * n, d)
    rows_out = out.view(b * n, d)
    m = b * n
    shape = (launch or _default_launch(x.device, b * n)).for_element_size(h.element_size())
    if interpreting():  # the interpreter runs one program at a time: small tiles keep CPU tests quick
        shape = LaunchShape(block_m=16, block_n=16, block_k=16, group_m=2, warps=1, stages=1, tma=shape.tma,
                            persistent=shape.persistent)
    precision = "ieee" if h.dtype == torch.float32 else "tf32"
    flags = dict(HAS_BIAS=bias is not None, HAS_GATE=gate is not None, ONE_BATCH=n % shape.block_m == 0,
                 PRECISION=precision, BLOCK_M=shape.block_m, BLOCK_N=shape.block_n, BLOCK_K=shape.block_k,
                 GROUP_M=shape.group_m)
    gate_stride = gate.stride(0) if gate is not None else 0
    bias_arg = bias if bias is not None else out  # never read without HAS_BIAS
    gate_arg = gate if gate is not None else out
    tiles = triton.cdiv(m, shape.block_m) * triton.cdiv(d, shape.block_n)
    aligned = all((t.stride(0) * t.element_size()) % 16 == 0 and t.data_ptr() % 16 == 0
                  for t in (rows_h, rows_x, weight)) and (d * out.element_size()) % 16 == 0
    if shape.tma and aligned:
        from triton.tools.tensor_descriptor import TensorDescriptor

        programs = tiles
        if shape.persistent:
            programs = min(tiles, torch.cuda.get_device_properties(x.device).multi_processor_count
                           if x.is_cuda else 4)
        tile = [shape.block_m, shape.block_n]
        _linear_residual_tma_kernel[(programs,)](
            TensorDescriptor.from_tensor(rows_h, [shape.block_m, shape.block_k]),
            TensorDescriptor.from_tensor(weight, [shape.block_n, shape.block_k]),
            TensorDescriptor.from_tensor(rows_x, tile), TensorDescriptor.from_tensor(rows_out, tile),
            bias_arg, gate_arg, m, k, d, n, gate_stride, programs,
            OUT_DTYPE=TL_DTYPES[x.dtype], WARP_SPECIALIZE=shape.warp_specialize and not interpreting(), **flags,
            num_warps=shape.warps, num_stages=shape.stages,
        )
        return out
    _linear_residual_kernel[(tiles,)](
        rows_h, weight, bias_arg, rows_x, gate_arg, rows_out, m, k, d, n,
        rows_h.stride(0), weight.stride(0), rows_x.stride(0), gate_stride, rows_out.stride(0),
        EVEN_K=k % shape.block_k == 0, **flags, num_warps=shape.warps, num_stages=shape.stages,
    )
    return out


def _default_launch(device: torch.device, rows: int) -> LaunchShape:
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9:
        return HOPPER_LAUNCH if rows >= 8192 else HOPPER_LAUNCH_FEW_ROWS
    return LAUNCH_SHAPES[0]
