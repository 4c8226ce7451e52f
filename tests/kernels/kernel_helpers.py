"""Shared constants and helpers of the kernel tests (device, dtypes, tolerances, relative error)."""

from __future__ import annotations

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# Relative-error bounds against the reference, which rounds its fp32 result to the same dtype once. The
# kernels sum in another order (and the GPU attention output uses tf32 for KV), so a few low bits differ.
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}

# bf16 only on a GPU: the interpreter's bf16 arithmetic is not faithful.
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16",
                 marks=pytest.mark.skipif(DEVICE != "cuda", reason="bf16 needs a GPU (interpreter is fp32/fp16)")),
]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64 (NaN if out holds an unwritten, NaN-poisoned element)."""
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()
