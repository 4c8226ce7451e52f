"""The fp8 row quantizer against its reference, and the fp8 linear (quantize + torch._scaled_mm) on the GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, assert_fp8_rows_equal, rel_err  # noqa: E402

from sana.kernels import quantize_fp8_rows  # noqa: E402
from sana.kernels.fp8.reference import (  # noqa: E402
    FP8_MAX,
    dequantize_fp8_rows,
    fp8_linear_reference,
    quantize_fp8_rows_reference,
)

SHAPES = [
    pytest.param((3, 16), id="m3-k16"),
    pytest.param((2, 5, 200), id="b2-n5-k200"),
    pytest.param((7, 2240), id="m7-k2240-sana1.6b"),
    pytest.param((2, 5600), id="m2-k5600-ffn-point"),
]
FP8_GPU = DEVICE == "cuda" and torch.cuda.get_device_capability() >= (8, 9)


def _check_against_reference(x):
    q, scale = quantize_fp8_rows(x)
    ref_q, ref_scale = quantize_fp8_rows_reference(x)
    assert q.is_contiguous()
    assert_fp8_rows_equal(q, scale, x)
    assert torch.isfinite(dequantize_fp8_rows(q, scale)).all()
    # The quantization itself: each nonzero row's largest magnitude maps to +-448, every value within half a step.
    nonzero = x.float().abs().amax(-1) > 0
    assert (ref_q.float().abs().amax(-1)[nonzero] == FP8_MAX).all()
    xf = x.float()
    assert ((dequantize_fp8_rows(ref_q, ref_scale) - xf).abs() <= xf.abs() / 16 + ref_scale[..., None] / 512).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_quantize_matches_reference(shape, dtype):
    torch.manual_seed(0)
    x = (torch.randn(shape, device=DEVICE) * torch.rand(shape[:-1] + (1,), device=DEVICE) * 20).to(dtype)
    _check_against_reference(x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_and_extreme_rows(dtype):
    torch.manual_seed(0)
    x = torch.randn(4, 48, device=DEVICE)
    x[0] = 0  # an all-zero row: a finite scale, zeros out
    x[1] *= 1e4 if dtype == torch.float16 else 1e6  # near the top of the dtype
    x[2] *= 1e-4  # small magnitudes keep their relative precision
    x = x.to(dtype)
    _check_against_reference(x)
    q, scale = quantize_fp8_rows(x)
    assert (q[0].float() == 0).all() and scale[0] > 0


def test_strided_rows_of_a_view():
    """Rows of a wider tensor (a chunk of a fused projection) are read through their stride."""
    torch.manual_seed(0)
    wide = torch.randn(2, 9, 96, device=DEVICE)
    x = wide[..., 32:64]
    q, scale = quantize_fp8_rows(x)
    ref_q, ref_scale = quantize_fp8_rows_reference(x)
    assert torch.equal(scale, ref_scale)
    assert (q.float() == ref_q.float()).float().mean() > 0.9  # the rest: the interpreter's carry (see above)


def test_reference_linear_error_is_fp8_rounding():
    """The spec's own error against the full-precision product: two 3-bit roundings, ~3-4% relative."""
    torch.manual_seed(0)
    x = torch.randn(64, 256, device=DEVICE)
    w = torch.randn(96, 256, device=DEVICE) / 16
    b = torch.randn(96, device=DEVICE)
    w8, ws = quantize_fp8_rows_reference(w)
    err = rel_err(fp8_linear_reference(x, w8, ws, b) - b, F.linear(x, w))
    assert 5e-3 < err < 6e-2


@pytest.mark.skipif(not FP8_GPU, reason="fp8 GEMMs need an NVIDIA GPU of compute capability 8.9+")
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("m,k,n", [(1, 32, 48), (300, 2240, 6720), (2 * 1024, 5600, 2240), (77, 64, 16)])
def test_fp8_linear_matches_reference(m, k, n, bias):
    from sana.kernels import fp8_linear

    torch.manual_seed(0)
    x = torch.randn(2, m, k, device="cuda", dtype=torch.bfloat16)
    w8, ws = quantize_fp8_rows_reference(torch.randn(n, k, device="cuda") / k**0.5)
    b = torch.randn(n, device="cuda", dtype=torch.bfloat16) if bias else None
    out = fp8_linear(x, w8, ws, b)
    ref = fp8_linear_reference(x, w8, ws, b)
    assert out.shape == (2, m, n) and out.dtype == torch.bfloat16
    assert rel_err(out, ref) < 1e-2  # the same quantized operands: bf16 output rounding and summation order
