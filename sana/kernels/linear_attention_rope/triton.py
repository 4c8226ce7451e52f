"""Fused ReLU linear attention with RoPE on the numerator only (SANA-Video), in two Triton phases.

Phase 1, grid (B*H, splits of N): each program accumulates rot(relu(K))^T V [D, D] and the un-rotated
sum relu(K) [D] over its slice of tokens in fp32 and writes them as partials (no atomics: deterministic).
Phase 2, grid (B*H, chunks of N): each program sums the partials once, then streams its chunk of queries and
writes out_n = rot(relu(q_n)) KV / (relu(q_n) . ksum + eps) token-major.

The rotation pairs channels (2i, 2i+1). Both phases load whole rows of q (or k) and of the tables, split them
into their even and odd channels in registers ([tokens, D/2] each, `_even_odd`) and rotate with cos[n, 2i] and
sin[n, 2i+1] (the channels the reference uses), so no rotated copy of q or k exists in memory. (Loading every
other channel directly, with stride-2 pointers, ran 2.8x slower on an H200 at 480p.) KV is kept split the same
way: KV_even [D/2, D] holds the rows of the even channels, KV_odd the odd ones, and
rot(q) KV = rot(q)_even KV_even + rot(q)_odd KV_odd.

q, k, v are read in place through their strides (the three views of one fused qkv projection need no copies).

"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float, check_last_dim_contiguous, target_programs
from .reference import EPS

# -- kernels ------------------------------------------------------------------------------------------------


@triton.jit
def _even_odd(x, ROWS: tl.constexpr, PAIRS: tl.constexpr):
    """[ROWS, 2*PAIRS] -> its even and its odd channels, [ROWS, PAIRS] each, in registers."""
    return tl.split(tl.reshape(x, (ROWS, PAIRS, 2)))


@triton.jit
def _rope_kv_partials_kernel(
    k_ptr, v_ptr, cos_ptr, sin_ptr, kv_ptr, ksum_ptr,
    N, H, tokens_per_split,
    stride_kb, stride_kn, stride_vb, stride_vn, stride_cos, stride_sin,
    D: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    bh = tl.program_id(0)
    split = tl.program_id(1)
    splits = tl.num_programs(1)
    b = bh // H
    h = bh % H

    offs_p = tl.arange(0, BLOCK_P)  # channel pairs
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    # Batch offsets can pass 2**31 elements at video sizes; the per-block offsets stay small.
    k_head = k_ptr + b.to(tl.int64) * stride_kb + h * D
    v_head = v_ptr + b.to(tl.int64) * stride_vb + h * D

    kv_even = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    kv_odd = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    ksum_even = tl.zeros((BLOCK_P,), dtype=tl.float32)
    ksum_odd = tl.zeros((BLOCK_P,), dtype=tl.float32)
    start = split * tokens_per_split
    # Pointers advance block by block so that no per-element offset needs 64 bits.
    k_ptrs = k_head + start.to(tl.int64) * stride_kn + offs_t[:, None] * stride_kn + offs_d[None, :]
    v_ptrs = v_head + start.to(tl.int64) * stride_vn + offs_t[:, None] * stride_vn + offs_d[None, :]
    cos_ptrs = cos_ptr + (start + offs_t)[:, None] * stride_cos + offs_d[None, :]
    sin_ptrs = sin_ptr + (start + offs_t)[:, None] * stride_sin + offs_d[None, :]
    for n0 in range(start, start + tokens_per_split, BLOCK_N):
        mask = ((n0 + offs_t) < N)[:, None] & d_ok[None, :]
        v = tl.load(v_ptrs, mask=mask, other=0.0)
        k0, k1 = _even_odd(tl.load(k_ptrs, mask=mask, other=0.0), BLOCK_N, BLOCK_P)
        cos_t, _ = _even_odd(tl.load(cos_ptrs, mask=mask, other=0.0), BLOCK_N, BLOCK_P)
        _, sin_t = _even_odd(tl.load(sin_ptrs, mask=mask, other=0.0), BLOCK_N, BLOCK_P)
        cos_t = cos_t.to(tl.float32)
        sin_t = sin_t.to(tl.float32)
        k0 = tl.where(k0 > 0, k0.to(tl.float32), 0.0)  # ReLU, exact in fp32
        k1 = tl.where(k1 > 0, k1.to(tl.float32), 0.0)
        # rot(k) is rounded once to the input dtype (the reference rounds it there too), so half inputs take
        # exact products on the tensor cores with fp32 accumulation.
        r0 = (k0 * cos_t - k1 * sin_t).to(v.dtype)
        r1 = (k0 * sin_t + k1 * cos_t).to(v.dtype)
        kv_even = tl.dot(tl.trans(r0), v, kv_even, input_precision=DOT_PRECISION)
        kv_odd = tl.dot(tl.trans(r1), v, kv_odd, input_precision=DOT_PRECISION)
        ksum_even += tl.sum(k0, axis=0)
        ksum_odd += tl.sum(k1, axis=0)
        k_ptrs += BLOCK_N * stride_kn
        v_ptrs += BLOCK_N * stride_vn
        cos_ptrs += BLOCK_N * stride_cos
        sin_ptrs += BLOCK_N * stride_sin

    # Partials [B*H, splits, 2 (even, odd), BLOCK_P, BLOCK_D] and [B*H, splits, 2, BLOCK_P].
    part = bh * splits + split
    kv_out = kv_ptr + part * 2 * BLOCK_P * BLOCK_D + offs_p[:, None] * BLOCK_D + offs_d[None, :]
    tl.store(kv_out, kv_even)
    tl.store(kv_out + BLOCK_P * BLOCK_D, kv_odd)
    tl.store(ksum_ptr + part * 2 * BLOCK_P + offs_p, ksum_even)
    tl.store(ksum_ptr + part * 2 * BLOCK_P + BLOCK_P + offs_p, ksum_odd)


@triton.jit
def _rope_out_kernel(
    q_ptr, cos_ptr, sin_ptr, kv_ptr, ksum_ptr, o_ptr,
    N, H, splits, tokens_per_program, eps,
    stride_qb, stride_qn, stride_cos, stride_sin, stride_ob, stride_on,
    D: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    bh = tl.program_id(0)
    chunk = tl.program_id(1)
    b = bh // H
    h = bh % H

    offs_p = tl.arange(0, BLOCK_P)
    offs_d = tl.arange(0, BLOCK_D)
    offs_t = tl.arange(0, BLOCK_M)
    d_ok = offs_d < D

    # The partials are tiny next to the token stream: each program sums them once for its whole chunk.
    kv_even = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    kv_odd = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
    ksum_even = tl.zeros((BLOCK_P,), dtype=tl.float32)
    ksum_odd = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for split in range(splits):
        part = bh * splits + split
        kv_in = kv_ptr + part * 2 * BLOCK_P * BLOCK_D + offs_p[:, None] * BLOCK_D + offs_d[None, :]
        kv_even += tl.load(kv_in)
        kv_odd += tl.load(kv_in + BLOCK_P * BLOCK_D)
        ksum_even += tl.load(ksum_ptr + part * 2 * BLOCK_P + offs_p)
        ksum_odd += tl.load(ksum_ptr + part * 2 * BLOCK_P + BLOCK_P + offs_p)

    q_head = q_ptr + b.to(tl.int64) * stride_qb + h * D
    o_head = o_ptr + b.to(tl.int64) * stride_ob + h * D
    start = chunk * tokens_per_program
    q_ptrs = q_head + start.to(tl.int64) * stride_qn + offs_t[:, None] * stride_qn + offs_d[None, :]
    o_ptrs = o_head + start.to(tl.int64) * stride_on + offs_t[:, None] * stride_on + offs_d[None, :]
    cos_ptrs = cos_ptr + (start + offs_t)[:, None] * stride_cos + offs_d[None, :]
    sin_ptrs = sin_ptr + (start + offs_t)[:, None] * stride_sin + offs_d[None, :]
    for m0 in range(start, start + tokens_per_program, BLOCK_M):
        mask = ((m0 + offs_t) < N)[:, None] & d_ok[None, :]
        q = tl.load(q_ptrs, mask=mask, other=0.0)
        q0, q1 = _even_odd(q, BLOCK_M, BLOCK_P)
        cos_t, _ = _even_odd(tl.load(cos_ptrs, mask=mask, other=0.0), BLOCK_M, BLOCK_P)
        _, sin_t = _even_odd(tl.load(sin_ptrs, mask=mask, other=0.0), BLOCK_M, BLOCK_P)
        cos_t = cos_t.to(tl.float32)
        sin_t = sin_t.to(tl.float32)
        q0 = tl.where(q0 > 0, q0.to(tl.float32), 0.0)
        q1 = tl.where(q1 > 0, q1.to(tl.float32), 0.0)
        # rot(q) stays fp32: tf32 tensor cores for half inputs (rounding rot(q) and KV at 2**-11, below the
        # output's own rounding), full fp32 for fp32 inputs.
        num = tl.dot(q0 * cos_t - q1 * sin_t, kv_even, input_precision=DOT_PRECISION)  # [BLOCK_M, BLOCK_D]
        num = tl.dot(q0 * sin_t + q1 * cos_t, kv_odd, num, input_precision=DOT_PRECISION)
        # The normaliser uses the un-rotated q and k, in fp32 (the reference rounds it to the input dtype).
        den = tl.sum(q0 * ksum_even[None, :], axis=1) + tl.sum(q1 * ksum_odd[None, :], axis=1)  # [BLOCK_M]
        out = num / (den[:, None] + eps)
        tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=mask)
        q_ptrs += BLOCK_M * stride_qn
        o_ptrs += BLOCK_M * stride_on
        cos_ptrs += BLOCK_M * stride_cos
        sin_ptrs += BLOCK_M * stride_sin


# -- launcher -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """A launch shape: tokens a loop step, warps and software-pipeline stages of each phase, and programs per
    streaming multiprocessor (how finely each head's tokens are split)."""

    kv_tokens: int
    out_tokens: int
    kv_warps: int = 4
    out_warps: int = 4
    kv_stages: int = 3  # Triton's default on NVIDIA GPUs
    out_stages: int = 3
    programs_per_sm: int = 4


def default_config(block_d: int, element_size: int) -> Config:
    """Half inputs at D = 112: the fastest of the sweep at 480p on an H200 (0.929 ms against 1.044 for 64 tokens
    a step, 4 warps and 3 stages in both phases): phase 2 streams 128 queries a step over 8 warps, and both phases
    pipeline 2 stages deep. fp32 at D = 112: 64 tokens a step of k (or q), v and both tables need over 270 KB of
    shared memory over the pipeline's stages in either phase (an H200 has 227 KB); 32 take about half."""
    if block_d <= 32:
        return Config(128, 64)
    if block_d >= 128 and element_size >= 4:
        return Config(32, 32)
    if block_d >= 128:
        return Config(64, 128, kv_warps=4, out_warps=8, kv_stages=2, out_stages=2)
    return Config(64, 64)


def _programs(device: torch.device, config: Config) -> int:
    if device.type == "cuda":
        return config.programs_per_sm * torch.cuda.get_device_properties(device).multi_processor_count
    return target_programs(device)


def _chunking(n: int, block: int, programs_per_head: int) -> tuple[int, int]:
    """Split n tokens into at most programs_per_head chunks of whole blocks: (tokens per chunk, chunks)."""
    chunks = max(1, min(triton.cdiv(n, block), programs_per_head))
    per_chunk = triton.cdiv(triton.cdiv(n, chunks), block) * block
    return per_chunk, triton.cdiv(n, per_chunk)


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
            out: torch.Tensor, heads: int, eps: float, config: Config | None) -> None:
    b, n, inner = q.shape
    d = inner // heads
    # tl.dot needs >= 16 lanes on each side; padded lanes are masked to zero (D = 112: 56 pairs in 64 lanes,
    # whole rows in 128).
    block_p = max(16, triton.next_power_of_2(d // 2))
    block_d = 2 * block_p
    config = config or default_config(block_d, q.element_size())
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    per_head = max(1, _programs(q.device, config) // (b * heads))

    tokens_per_split, splits = _chunking(n, config.kv_tokens, per_head)
    kv = torch.empty((b * heads, splits, 2, block_p, block_d), device=q.device, dtype=torch.float32)
    ksum = torch.empty((b * heads, splits, 2, block_p), device=q.device, dtype=torch.float32)
    _rope_kv_partials_kernel[(b * heads, splits)](
        k, v, cos, sin, kv, ksum,
        n, heads, tokens_per_split,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos.stride(0), sin.stride(0),
        D=d, BLOCK_P=block_p, BLOCK_D=block_d, BLOCK_N=config.kv_tokens, DOT_PRECISION=precision,
        num_warps=config.kv_warps, num_stages=config.kv_stages,
    )

    tokens_per_program, chunks = _chunking(n, config.out_tokens, per_head)
    _rope_out_kernel[(b * heads, chunks)](
        q, cos, sin, kv, ksum, out,
        n, heads, splits, tokens_per_program, eps,
        q.stride(0), q.stride(1), cos.stride(0), sin.stride(0), out.stride(0), out.stride(1),
        D=d, BLOCK_P=block_p, BLOCK_D=block_d, BLOCK_M=config.out_tokens, DOT_PRECISION=precision,
        num_warps=config.out_warps, num_stages=config.out_stages,
    )


# -- public function ----------------------------------------------------------------------------------------


def linear_attention_rope(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                          heads: int, eps: float = EPS, *, config: Config | None = None) -> torch.Tensor:
    """ReLU linear attention with RoPE on the numerator only, fused; the spec is
    `reference.linear_attention_rope_reference`.

    Args:
        q, k, v: [B, N, H*D], one float dtype, last dim contiguous (q and k before the ReLU); other strides are
            free, so the three `chunk(3, -1)` views of a fused qkv projection [B, N, 3*H*D] are read in place.
        cos, sin: [N, D] per-token tables (each pair's value repeated in its two channels; only cos[:, 0::2] and
            sin[:, 1::2] enter the result), any float dtype, last dim contiguous; rounded to q's dtype as the
            reference does.
        heads: H. Any even head dim D up to 128 (SANA-Video and SANA-WM: 112).
        eps: added to the normaliser (diffusers: 1e-15).
        config: the launch shape (None: `default_config`).

    Returns:
        [B, N, H*D] contiguous, q's dtype: out_n = rot(relu(q_n)) (rot(relu(K))^T V) / (relu(q_n) .
        sum_m relu(k_m) + eps) per (b, h). KV and the numerator accumulate in fp32, as in the reference. The
        normaliser is also fp32 here, where the reference (diffusers' arithmetic) rounds it to the input dtype:
        for half inputs the kernel is the more exact of the two.
    """
    name = "linear_attention_rope"
    if q.dim() != 3 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"{name}: q, k, v must all be [B, N, H*D], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"{name}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_float(name, "q", q)
    b, n, inner = q.shape
    if heads <= 0 or inner % heads:
        raise ValueError(f"{name}: heads={heads} does not divide the last dim {inner}")
    d = inner // heads
    if d % 2 or d > 128:
        raise ValueError(f"{name}: head dim {d} must be even and at most 128")
    if cos.shape != (n, d) or sin.shape != (n, d):
        raise ValueError(f"{name}: cos, sin must be [N, D] = {(n, d)}, got {tuple(cos.shape)}, {tuple(sin.shape)}")
    check_float(name, "cos", cos)
    check_float(name, "sin", sin)
    for arg, t in (("q", q), ("k", k), ("v", v), ("cos", cos), ("sin", sin)):
        check_last_dim_contiguous(name, arg, t)
    check_device(name, q, k, v, cos, sin)
    # The reference rotates with the tables in the input dtype: round them once here ([N, D], small), so that
    # the kernels load them in q's dtype (a no-op for a model whose tables are already in it).
    cos, sin = cos.to(q.dtype), sin.to(q.dtype)
    out = torch.empty((b, n, inner), device=q.device, dtype=q.dtype)
    if out.numel() == 0:
        return out
    _launch(q, k, v, cos, sin, out, heads, eps, config)
    return out
