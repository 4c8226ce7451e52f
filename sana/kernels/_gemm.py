"""Pieces the Triton GEMMs share (the temporal conv's implicit GEMM, the linear with the residual in its epilogue):
the launch shape, the tile order, the K loop and the output dtypes as Triton names them."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


@dataclass(frozen=True)
class LaunchShape:
    """A GEMM's tile shape and schedule: [block_m, block_n] output tiles over K steps of block_k, GROUP_M row
    blocks a group (`grouped_tile`), the warps and pipeline stages of a program."""

    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    group_m: int = 8
    warps: int = 8
    stages: int = 4
    tma: bool = False  # tiles through tensor descriptors (Hopper's TMA)

    def for_element_size(self, size: int) -> "LaunchShape":
        """fp32 tiles take twice the shared memory a stage: K steps of at most 32 in at most three stages."""
        if size < 4:
            return self
        return dataclasses.replace(self, block_k=min(self.block_k, 32), stages=min(self.stages, 3))


@triton.jit
def grouped_tile(pid, rows, cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Tile `pid` of a [rows, cols] output -> its (row block, column block), in groups of GROUP_M row blocks, so
    the programs running together share their rows and weights in L2."""
    num_n = tl.cdiv(cols, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(tl.cdiv(rows, BLOCK_M) - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_rows, (pid % per_group) // group_rows


@triton.jit
def accumulate_k(acc, a_ptrs, w_ptrs, row_ok, col_ok, K, EVEN_K: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] + A W over K in steps of BLOCK_K: a_ptrs [BLOCK_M, BLOCK_K] and w_ptrs [BLOCK_K,
    BLOCK_N] point at k = 0, both contiguous along K; rows, columns and the K tail outside are read as zeros."""
    ks = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
            w = tl.load(w_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            k_ok = (k0 + ks) < K
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    return acc
