"""Fused ReLU linear attention in two Triton phases.

Phase 1, grid (B*H, splits of N): each program accumulates relu(K)^T V [D, D] and sum relu(K) [D] over its
slice of tokens in fp32 and writes them as partials (no atomics, so results are deterministic).
Phase 2, grid (B*H, chunks of N): each program sums the partials once, then streams its chunk of queries and
writes out_i = relu(q_i) KV / (relu(q_i) . ksum + eps) token-major.

q, k, v are read in place through their strides, so the three views of one fused qkv projection
[B, N, 3*H*D] need no copies; nothing is upcast in memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float, check_last_dim_contiguous, target_programs
from .reference import EPS

# -- kernels ------------------------------------------------------------------------------------------------


@triton.jit
def _kv_partials_kernel(
    k_ptr, v_ptr, kv_ptr, ksum_ptr,
    N, H, tokens_per_split,
    stride_kb, stride_kn, stride_vb, stride_vn,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    b = bh // H
    h = bh % H

    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    # Batch offsets can pass 2**31 elements at video sizes; the per-block offsets stay small.
    k_head = k_ptr + b.to(tl.int64) * stride_kb + h * D
    v_head = v_ptr + b.to(tl.int64) * stride_vb + h * D

    kv = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    ksum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    start = split * tokens_per_split
    # Pointers advance block by block so that no per-element offset needs 64 bits.
    k_ptrs = k_head + start.to(tl.int64) * stride_kn + offs_t[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = v_head + start.to(tl.int64) * stride_vn + offs_t[:, None] * stride_vn + offs_d[None, :]
    for n0 in range(start, start + tokens_per_split, BLOCK_N):
        mask = ((n0 + offs_t) < N)[:, None] & d_ok[None, :]
        k = tl.load(k_ptrs, mask=mask, other=0.0)
        v = tl.load(v_ptrs, mask=mask, other=0.0)
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
        k = tl.where(k > 0, k, 0.0).to(v.dtype)  # ReLU in the input dtype: exact, no upcast copy
        # Half inputs: exact products on the tensor cores, fp32 accumulation.
        kv = tl.dot(tl.trans(k), v, kv, input_precision=DOT_PRECISION)
        ksum += tl.sum(k.to(tl.float32), axis=0)

    part = bh * splits + split
    tl.store(kv_ptr + part * BLOCK_D * BLOCK_D + offs_d[:, None] * BLOCK_D + offs_d[None, :], kv)
    tl.store(ksum_ptr + part * BLOCK_D + offs_d, ksum)


@triton.jit
def _linear_attention_out_kernel(
    q_ptr, kv_ptr, ksum_ptr, o_ptr,
    N, H, splits, tokens_per_program, eps,
    stride_qb, stride_qn, stride_ob, stride_on,
    D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    bh = tl.program_id(0)
    chunk = tl.program_id(1)
    b = bh // H
    h = bh % H

    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_M)
    d_ok = offs_d < D

    # The partials are tiny next to the token stream: each program sums them once for its whole chunk.
    kv = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float32)
    ksum = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for s in range(splits):
        part = bh * splits + s
        kv += tl.load(kv_ptr + part * BLOCK_D * BLOCK_D + offs_d[:, None] * BLOCK_D + offs_d[None, :])
        ksum += tl.load(ksum_ptr + part * BLOCK_D + offs_d)

    q_head = q_ptr + b.to(tl.int64) * stride_qb + h * D
    o_head = o_ptr + b.to(tl.int64) * stride_ob + h * D
    start = chunk * tokens_per_program
    q_ptrs = q_head + start.to(tl.int64) * stride_qn + offs_t[:, None] * stride_qn + offs_d[None, :]
    o_ptrs = o_head + start.to(tl.int64) * stride_on + offs_t[:, None] * stride_on + offs_d[None, :]
    for m0 in range(start, start + tokens_per_program, BLOCK_M):
        mask = ((m0 + offs_t) < N)[:, None] & d_ok[None, :]
        q = tl.load(q_ptrs, mask=mask, other=0.0)
        q = tl.where(q > 0, q.to(tl.float32), 0.0)
        # fp32 x fp32: tf32 tensor cores for half inputs (q is exact in tf32, KV rounds at 2**-11, below the
        # output's own rounding), full fp32 for fp32 inputs.
        num = tl.dot(q, kv, input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_D]
        den = tl.sum(q * ksum[None, :], axis=1)  # [BLOCK_M], exact fp32
        out = num / (den[:, None] + eps)
        if o_ptr.dtype.element_ty == tl.float16:
            out = tl.minimum(tl.maximum(out, -65504.0), 65504.0)
        tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=mask)
        q_ptrs += BLOCK_M * stride_qn
        o_ptrs += BLOCK_M * stride_on


# -- launcher -----------------------------------------------------------------------------------------------


def _block_config(block_d: int) -> tuple[int, int, int]:
    """(tokens per phase-1 step, tokens per phase-2 step, warps) for a padded head dim.

    Picked by a sweep on an H100 (bf16, 1.6B at 4096 px and video 20 x 112 at 81 frames): 8 warps were
    slower at every block size tried, for both head dims.
    """
    if block_d <= 32:
        return 128, 64, 4
    return 64, 64, 4


def _chunking(n: int, block: int, programs_per_head: int) -> tuple[int, int]:
    """Split n tokens into at most programs_per_head chunks of whole blocks: (tokens per chunk, chunks)."""
    chunks = max(1, min(triton.cdiv(n, block), programs_per_head))
    per_chunk = triton.cdiv(triton.cdiv(n, chunks), block) * block
    return per_chunk, triton.cdiv(n, per_chunk)


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, heads: int, eps: float) -> None:
    b, n, inner = q.shape
    d = inner // heads
    block_d = max(16, triton.next_power_of_2(d))  # tl.dot needs >= 16; padded lanes are masked to zero
    block_n, block_m, warps = _block_config(block_d)
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    per_head = max(1, target_programs(q.device) // (b * heads))

    tokens_per_split, splits = _chunking(n, block_n, per_head)
    kv = torch.empty((b * heads, splits, block_d, block_d), device=q.device, dtype=torch.float32)
    ksum = torch.empty((b * heads, splits, block_d), device=q.device, dtype=torch.float32)
    _kv_partials_kernel[(b * heads, splits)](
        k, v, kv, ksum,
        n, heads, tokens_per_split,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        D=d, BLOCK_D=block_d, BLOCK_N=block_n, DOT_PRECISION=precision, num_warps=warps,
    )

    tokens_per_program, chunks = _chunking(n, block_m, per_head)
    _linear_attention_out_kernel[(b * heads, chunks)](
        q, kv, ksum, out,
        n, heads, splits, tokens_per_program, eps,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        D=d, BLOCK_D=block_d, BLOCK_M=block_m, DOT_PRECISION=precision, num_warps=warps,
    )


# -- public function ----------------------------------------------------------------------------------------


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, eps: float = EPS) -> torch.Tensor:
    """ReLU linear attention, fused; the spec is `reference.linear_attention_reference`.

    Args:
        q, k, v: [B, N, H*D], one float dtype, last dim contiguous; other strides are free, so the three
            `chunk(3, -1)` views of a fused qkv projection [B, N, 3*H*D] are read in place.
        heads: H. Any head dim D up to 128 (SANA: 32 for images, 112 for video).
        eps: added to the normaliser (diffusers: 1e-15).

    Returns:
        [B, N, H*D] contiguous, q's dtype: out[b, i, h*D:(h+1)*D] = relu(q_i) (relu(K)^T V) / (relu(q_i) .
        sum_j relu(k_j) + eps) per (b, h), accumulated in fp32; fp16 results clipped to +-65504.
    """
    name = "linear_attention"
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"{name}: q, k, v must all be [B, N, H*D], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"{name}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_float(name, "q", q)
    for arg, t in (("q", q), ("k", k), ("v", v)):
        check_last_dim_contiguous(name, arg, t)
    check_device(name, q, k, v)
    b, n, inner = q.shape
    if heads <= 0 or inner % heads:
        raise ValueError(f"{name}: heads={heads} does not divide the last dim {inner}")
    if inner // heads > 128:
        raise ValueError(f"{name}: head dim {inner // heads} > 128 is not supported")
    out = torch.empty((b, n, inner), device=q.device, dtype=q.dtype)
    if out.numel() == 0:
        return out
    _launch(q, k, v, out, heads, eps)
    return out
