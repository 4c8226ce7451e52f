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


def assert_fp8_rows_equal(q: torch.Tensor, scale: torch.Tensor, values: torch.Tensor) -> None:
    """(q, scale) is `quantize_fp8_rows_reference(values)`: the scales bit for bit (IEEE divisions on both sides),
    and q too on a GPU. The interpreter's fp8 cast drops the carry when a value rounds up to a power of two (it
    writes half of it), rounds ties away from zero and may be a step off among the subnormals (below 2^-6,
    steps of 2^-9); every other element must match there. On a GPU with fp32 rows, the fused kernel's row and the
    plain kernel's may differ in the last bit (the compiler contracts each program's arithmetic its own way),
    which moves the row's scale by as much and can tip an element to the neighbouring fp8 step."""
    from sana.kernels.fp8.reference import AMAX_FLOOR, FP8_DTYPE, FP8_MAX, quantize_fp8_rows_reference

    ref_q, ref_scale = quantize_fp8_rows_reference(values)
    assert q.dtype == FP8_DTYPE and q.shape == values.shape
    assert scale.dtype == torch.float32 and scale.shape == values.shape[:-1]
    qf, rf = q.float(), ref_q.float()
    if DEVICE == "cuda" and values.dtype == torch.float32:
        torch.testing.assert_close(scale, ref_scale, rtol=4e-7, atol=0)  # a few fp32 ulps
        step = torch.maximum(rf.abs(), qf.abs()) * 2.0**-3 + 2.0**-9  # one e4m3 step at that magnitude
        assert ((qf - rf).abs() <= step).all()
        assert (qf != rf).float().mean().item() < 1e-3  # only elements at a rounding boundary
        return
    assert torch.equal(scale, ref_scale)
    if DEVICE == "cuda":
        assert torch.equal(qf, rf)  # both round to nearest even
        return
    amax = values.float().abs().amax(-1, keepdim=True).clamp_min(AMAX_FLOOR)
    scaled = values.float() * (torch.full_like(amax, FP8_MAX) / amax)  # the reference's values before rounding
    mantissa, _ = torch.frexp(rf.abs())
    carry = (rf.abs() > scaled.abs()) & (mantissa == 0.5) & (qf == rf / 2)
    tie = (qf - scaled).abs() == (rf - scaled).abs()
    subnormal = (rf.abs() < 2**-6) & ((qf - rf).abs() <= 2**-9)
    assert not ((qf != rf) & ~carry & ~tie & ~subnormal).any()
