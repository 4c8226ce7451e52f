"""SANA-Video's temporal conv as one Triton implicit GEMM over token-major activations.

The conv over frames is three GEMMs on row-shifted views of the tokens: output token (f, s) reads input tokens
(f - 1, s), (f, s) and (f + 1, s), which in a [B, F * S, C] tensor are the rows S before, at and S after it. A
program computes a [BLOCK_M tokens, BLOCK_N channels] tile of one clip, its K loop running over the three taps
and the input channels (K = 3 C), with the frames outside the clip masked to zero, so the three products sum in
fp32 and round once, like cuDNN's implicit GEMM (the reference). With `add_input` the epilogue also adds the
block's input y (the Mix-FFN's y + conv(y)), so the block's residual pass reads one tensor less.

The weight is read as [3, C_out, C] (each tap's [C_out, C] contiguous along C, like a linear's weight):
`reference.pack_weight` makes that layout from diffusers' [C_out, C, 3, 1] once; the model keeps it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float, check_last_dim_contiguous, interpreting
from .._gemm import TL_DTYPES, LaunchShape, accumulate_k, grouped_tile
from .reference import pack_weight


# The sweep's winner on an H100 (2026-12-05, bf16, the 2B model at 480p and 720p: 1.20x and 1.27x cuDNN's conv +
# add; the first candidate below ran at 0.88x): 128 x 256 tiles in three stages through tensor descriptors. TMA is
# Hopper's (compute capability 9+); other cards take the first candidate.
HOPPER_LAUNCH = LaunchShape(block_n=256, stages=3, tma=True)

# Candidates for a sweep on a GPU (`bench.py --sweep`).
LAUNCH_SHAPES = (
    LaunchShape(),
    LaunchShape(block_n=256, stages=3),
    LaunchShape(block_m=256, block_n=128, stages=3),
    LaunchShape(block_k=32, stages=5),
    LaunchShape(warps=4, stages=4),
    LaunchShape(block_n=256, block_k=32, stages=4),
    LaunchShape(block_m=64, block_n=256, stages=4, warps=4),
    LaunchShape(tma=True),
    LaunchShape(block_n=256, stages=3, tma=True),
    LaunchShape(block_m=256, block_n=128, stages=3, tma=True),
    LaunchShape(stages=3, tma=True),
)


@triton.jit
def _temporal_conv_kernel(
    y_ptr, w_ptr, out_ptr,
    N, S, C, C_OUT,
    stride_yb, stride_yn, stride_ob, stride_on, stride_wt, stride_wn,
    ADD_INPUT: tl.constexpr, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Program (tile, b): out[b, rows, cols] for BLOCK_M token rows and BLOCK_N output channels of clip b."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), N, C_OUT, BLOCK_M, BLOCK_N, GROUP_M)
    b = tl.program_id(1)

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ks = tl.arange(0, BLOCK_K)
    y_clip = y_ptr + b.to(tl.int64) * stride_yb
    col_ok = cols < C_OUT
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in tl.static_range(3):
        src = rows + (tap - 1) * S  # the token in the frame before, the same frame, the frame after
        row_ok = (src >= 0) & (src < N) & (rows < N)  # frames outside the clip are zero padding
        a_ptrs = y_clip + src[:, None].to(tl.int64) * stride_yn + ks[None, :]
        w_ptrs = w_ptr + tap * stride_wt + cols[None, :].to(tl.int64) * stride_wn + ks[:, None]  # [BLOCK_K, BLOCK_N]
        acc = accumulate_k(acc, a_ptrs, w_ptrs, row_ok, col_ok, C, EVEN_K, PRECISION, BLOCK_K)

    dtype = out_ptr.dtype.element_ty
    out = acc.to(dtype)  # the conv rounded once, as cuDNN rounds it
    mask = (rows < N)[:, None] & col_ok[None, :]
    if ADD_INPUT:  # y + conv(y): the sum rounded again, as the bf16 add rounds it
        y = tl.load(y_clip + rows[:, None].to(tl.int64) * stride_yn + cols[None, :], mask=mask, other=0.0)
        out = (out.to(tl.float32) + y.to(tl.float32)).to(dtype)
    out_ptrs = out_ptr + b.to(tl.int64) * stride_ob + rows[:, None].to(tl.int64) * stride_on + cols[None, :]
    tl.store(out_ptrs, out, mask=mask)


@triton.jit
def _temporal_conv_tma_kernel(
    y_desc, w_desc, res_desc, out_desc,
    N, C, C_OUT, S,
    OUT_DTYPE: tl.constexpr, ADD_INPUT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """`_temporal_conv_kernel` through tensor descriptors over [B, N, C] (y, the output) and [3, C_out, C] (the
    weight): a tap's rows S before or after the tile start at a negative row or run past N, and the descriptor
    fills those rows (the frames outside the clip) with zeros, as it does the K and column tails."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), N, C_OUT, BLOCK_M, BLOCK_N, GROUP_M)
    b = tl.program_id(1)
    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tap in tl.static_range(3):
        row0 = m0 + (tap - 1) * S
        for k0 in range(0, C, BLOCK_K):
            a = tl.reshape(y_desc.load([b, row0, k0]), (BLOCK_M, BLOCK_K))
            w = tl.reshape(w_desc.load([tap, n0, k0]), (BLOCK_N, BLOCK_K))
            acc = tl.dot(a, tl.trans(w), acc, input_precision=PRECISION)

    out = acc.to(OUT_DTYPE)
    if ADD_INPUT:
        y = tl.reshape(res_desc.load([b, m0, n0]), (BLOCK_M, BLOCK_N))
        out = (out.to(tl.float32) + y.to(tl.float32)).to(OUT_DTYPE)
    out_desc.store([b, m0, n0], tl.reshape(out, (1, BLOCK_M, BLOCK_N)))


def temporal_conv(y: torch.Tensor, weight: torch.Tensor, tokens_per_frame: int, add_input: bool = False, *,
                  packed: torch.Tensor | None = None, launch: LaunchShape | None = None) -> torch.Tensor:
    """The temporal conv (plus y with `add_input`); the spec is `reference.temporal_conv_reference`.

    Args:
        y: [B, N, C], N = F * S tokens in (frame, token) order, channels contiguous (fp32, fp16 or bf16).
        weight: [C_out, C, 3, 1] (diffusers' Conv2d weight); ignored when `packed` is given.
        tokens_per_frame: S.
        add_input: return y + conv(y) (needs C_out == C).
        packed: `pack_weight(weight)` in y's dtype, when the caller keeps it.
        launch: the tile shape (default: `HOPPER_LAUNCH` on compute capability 9+, else `LAUNCH_SHAPES[0]`).

    Returns:
        [B, N, C_out] contiguous in y's dtype.
    """
    name = "temporal_conv"
    if y.dim() != 3:
        raise ValueError(f"{name}: y must be [B, N, C], got {tuple(y.shape)}")
    b, n, c = y.shape
    if tokens_per_frame < 1 or n % tokens_per_frame:
        raise ValueError(f"{name}: {n} tokens do not split into frames of {tokens_per_frame}")
    w = pack_weight(weight).to(y.dtype) if packed is None else packed
    if w.dim() != 3 or w.shape[0] != 3 or w.shape[2] != c:
        raise ValueError(f"{name}: packed weight must be [3, C_out, {c}], got {tuple(w.shape)}")
    c_out = w.shape[1]
    if add_input and c_out != c:
        raise ValueError(f"{name}: add_input needs C_out == C, got {c_out} and {c}")
    if w.dtype != y.dtype or not w.is_contiguous():
        raise ValueError(f"{name}: packed weight must be contiguous in y's dtype {y.dtype}")
    check_float(name, "y", y)
    check_last_dim_contiguous(name, "y", y)
    check_device(name, y, w)
    out = torch.empty((b, n, c_out), device=y.device, dtype=y.dtype)
    if out.numel() == 0:
        return out
    shape = (launch or _default_launch(y.device)).for_element_size(y.element_size())
    if interpreting():  # the interpreter runs one program at a time: small tiles keep CPU tests quick
        shape = LaunchShape(block_m=16, block_n=16, block_k=16, group_m=2, warps=1, stages=1, tma=shape.tma)
    grid = (triton.cdiv(n, shape.block_m) * triton.cdiv(c_out, shape.block_n), b)
    precision = "ieee" if y.dtype == torch.float32 else "tf32"
    aligned = (c * y.element_size()) % 16 == 0 and (c_out * y.element_size()) % 16 == 0  # descriptor rows
    if shape.tma and aligned:
        from triton.tools.tensor_descriptor import TensorDescriptor

        if y.stride(1) != c:  # a descriptor needs the rows packed (the kernel above takes any row stride)
            y = y.contiguous()
        rows, cols = [1, shape.block_m, shape.block_k], [1, shape.block_m, shape.block_n]
        _temporal_conv_tma_kernel[grid](
            TensorDescriptor.from_tensor(y, rows), TensorDescriptor.from_tensor(w, [1, shape.block_n, shape.block_k]),
            TensorDescriptor.from_tensor(y, cols), TensorDescriptor.from_tensor(out, cols),
            n, c, c_out, tokens_per_frame, OUT_DTYPE=TL_DTYPES[y.dtype], ADD_INPUT=add_input, PRECISION=precision,
            BLOCK_M=shape.block_m, BLOCK_N=shape.block_n, BLOCK_K=shape.block_k, GROUP_M=shape.group_m,
            num_warps=shape.warps, num_stages=shape.stages,
        )
        return out
    _temporal_conv_kernel[grid](
        y, w, out, n, tokens_per_frame, c, c_out,
        y.stride(0), y.stride(1), out.stride(0), out.stride(1), w.stride(0), w.stride(1),
        ADD_INPUT=add_input, EVEN_K=c % shape.block_k == 0,
        PRECISION=precision,
        BLOCK_M=shape.block_m, BLOCK_N=shape.block_n, BLOCK_K=shape.block_k, GROUP_M=shape.group_m,
        num_warps=shape.warps, num_stages=shape.stages,
    )
    return out


def _default_launch(device: torch.device) -> LaunchShape:
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9:
        return HOPPER_LAUNCH
    return LAUNCH_SHAPES[0]
