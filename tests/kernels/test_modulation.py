"""LayerNorm + adaLN modulation kernels against their fp32 references (and diffusers' block code)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, assert_fp8_rows_equal, rel_err  # noqa: E402

from sana.kernels import gated_residual_modulated_norm, modulated_layer_norm  # noqa: E402
from sana.kernels.modulation.reference import (  # noqa: E402
    gated_residual_modulated_norm_reference,
    modulated_layer_norm_reference,
)

SHAPES = [
    pytest.param(1, 7, 200, id="b1-n7-c200"),
    pytest.param(3, 5, 96, id="b3-n5-c96"),
    pytest.param(2, 3, 2240, id="b2-n3-c2240-sana1.6b-width"),
]


def _table(b, c, dtype, table_dtype, device=DEVICE):
    """shift, scale, gate as diffusers makes them: chunks [B, 1, C] of table [1, 6, C] + t [B, 6, C]."""
    table = torch.randn(1, 6, c, device=device).to(table_dtype) / c**0.5
    t = torch.randn(b, 6, c, device=device).to(dtype)
    return (table + t).chunk(6, dim=1)


def _x(b, n, c, dtype, device=DEVICE):
    return (torch.randn(b, n, c, device=device) * 2 + 0.5).to(dtype)  # an offset so the mean matters


@pytest.mark.parametrize("table", ["table-fp32", "table-model-dtype"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, n, c", SHAPES)
def test_modulated_layer_norm(b, n, c, dtype, table):
    torch.manual_seed(0)
    x = _x(b, n, c, dtype)
    shift, scale, *_ = _table(b, c, dtype, torch.float32 if table == "table-fp32" else dtype)
    out = modulated_layer_norm(x, shift, scale, 1e-6)
    ref = modulated_layer_norm_reference(x, shift, scale, 1e-6)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("gated", [True, False], ids=["gate", "no-gate"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, n, c", SHAPES)
def test_gated_residual_modulated_norm(b, n, c, dtype, gated):
    """No gate (None, read as 1): the cross-attention's residual, x + y, with no all-ones tensor made for it."""
    torch.manual_seed(0)
    x, y = _x(b, n, c, dtype), _x(b, n, c, dtype)
    shift, scale, gate, *_ = _table(b, c, dtype, torch.float32)
    gate = gate[:, 0] if gated else None  # [B, C] form
    res, out = gated_residual_modulated_norm(x, gate, y, shift, scale, 1e-6)
    ref_res, ref_out = gated_residual_modulated_norm_reference(x, gate, y, shift, scale, 1e-6)
    assert res.dtype == out.dtype == dtype
    assert torch.isfinite(res).all() and torch.isfinite(out).all()
    assert rel_err(res, ref_res) < TOLERANCE[dtype]
    assert rel_err(out, ref_out) < TOLERANCE[dtype]
    if not gated:  # exactly what an all-ones gate gives
        ones = torch.ones_like(shift)
        assert all(torch.equal(a, e) for a, e in zip((res, out), gated_residual_modulated_norm(x, ones, y, shift,
                                                                                                 scale, 1e-6)))


# -- the fp8 forms: the plain kernels' rows, quantized as the fp8 linear would ------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, n, c", SHAPES)
def test_modulated_layer_norm_fp8_is_the_plain_row_quantized(b, n, c, dtype):
    from sana.kernels import modulated_layer_norm_fp8

    torch.manual_seed(0)
    x = _x(b, n, c, dtype)
    shift, scale, *_ = _table(b, c, dtype, torch.float32)
    q, row_scale = modulated_layer_norm_fp8(x, shift, scale, 1e-6)
    assert q.shape == x.shape and row_scale.shape == (b, n)
    # The same fp32 row, rounded to x's dtype, then quantized: what quantizing the plain kernel's output gives.
    assert_fp8_rows_equal(q, row_scale, modulated_layer_norm(x, shift, scale, 1e-6))


@pytest.mark.parametrize("second", [False, True, None], ids=["y", "y+y2", "y-no-gate"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, n, c", SHAPES)
def test_gated_residual_modulated_norm_fp8_is_the_plain_pair_quantized(b, n, c, dtype, second):
    """With y2 (SANA-Video's temporal conv term) as the video block's boundary passes it, and without a gate
    (the cross-attention's residual)."""
    from sana.kernels import gated_residual_modulated_norm_fp8

    torch.manual_seed(0)
    x, y = _x(b, n, c, dtype), _x(b, n, c, dtype)
    y2 = _x(b, n, c, dtype) if second else None
    shift, scale, gate, *_ = _table(b, c, dtype, torch.float32)
    gate = None if second is None else gate
    res, q, row_scale = gated_residual_modulated_norm_fp8(x, gate, y, shift, scale, 1e-6, y2=y2)
    plain_res, plain_out = gated_residual_modulated_norm(x, gate, y, shift, scale, 1e-6, y2=y2)
    assert torch.equal(res, plain_res)
    assert_fp8_rows_equal(q, row_scale, plain_out)


def test_strided_rows():
    """x may be a row-strided view (e.g. a slice of a larger batch); only the last dim must be contiguous."""
    torch.manual_seed(0)
    big = _x(2, 9, 128, torch.float32)
    x = big[:, ::2]  # [2, 5, 128], token stride 256
    shift, scale, *_ = _table(2, 128, torch.float32, torch.float32)
    assert rel_err(modulated_layer_norm(x, shift, scale), modulated_layer_norm_reference(x, shift, scale)) < 1e-5


def test_reference_is_diffusers_block_math():
    """fp32: the reference equals diffusers' `norm1(x) * (1 + scale_msa) + shift_msa` with a LayerNorm module."""
    torch.manual_seed(0)
    x = _x(2, 11, 64, torch.float32, "cpu")
    shift, scale, gate, *_ = _table(2, 64, torch.float32, torch.float32, "cpu")
    norm = torch.nn.LayerNorm(64, elementwise_affine=False, eps=1e-6)
    expected = norm(x) * (1 + scale) + shift
    assert rel_err(modulated_layer_norm_reference(x, shift, scale), expected) < 1e-6
    y = _x(2, 11, 64, torch.float32, "cpu")
    res, out = gated_residual_modulated_norm_reference(x, gate, y, shift, scale)
    assert rel_err(res, x + gate * y) < 1e-6
    assert rel_err(out, norm(x + gate * y) * (1 + scale) + shift) < 1e-6


def test_rejects_bad_inputs():
    x = _x(2, 4, 32, torch.float32)
    shift, scale, gate, *_ = _table(2, 32, torch.float32, torch.float32)
    with pytest.raises(ValueError, match=r"shift must be \[B, C\]"):
        modulated_layer_norm(x, shift[:1], scale)
    with pytest.raises(ValueError, match=r"x must be \[B, N, C\]"):
        modulated_layer_norm(x[0], shift, scale)
    with pytest.raises(ValueError, match="contiguous last dim"):
        modulated_layer_norm(x.transpose(1, 2), shift, scale)
    with pytest.raises(ValueError, match="y must match x"):
        gated_residual_modulated_norm(x, gate, x[:, :2], shift, scale)
    with pytest.raises(ValueError, match="y must match x"):
        gated_residual_modulated_norm(x, None, x[:, :2], shift, scale)
    with pytest.raises(ValueError, match="y2 needs a gate"):
        gated_residual_modulated_norm(x, None, x, shift, scale, y2=x)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        modulated_layer_norm(x, shift.double(), scale)


# -- GPU, real SANA shapes ----------------------------------------------------------------------------------

GPU_SHAPES = [
    pytest.param(2, 1024, 2240, id="sana1.6b-1024px"),
    pytest.param(2, 16384, 2240, id="sana1.6b-4096px"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("b, n, c", GPU_SHAPES)
def test_gpu_bf16_real_shapes(b, n, c):
    torch.manual_seed(0)
    x, y = _x(b, n, c, torch.bfloat16, "cuda"), _x(b, n, c, torch.bfloat16, "cuda")
    shift, scale, gate, *_ = _table(b, c, torch.bfloat16, torch.bfloat16, "cuda")
    out = modulated_layer_norm(x, shift, scale)
    assert rel_err(out, modulated_layer_norm_reference(x.float(), shift.float(), scale.float())) < 1e-2
    res, out = gated_residual_modulated_norm(x, gate, y, shift, scale)
    ref_res, ref_out = gated_residual_modulated_norm_reference(x.float(), gate.float(), y.float(), shift.float(),
                                                               scale.float())
    assert rel_err(res, ref_res) < 1e-2
    assert rel_err(out, ref_out) < 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, n, c", SHAPES)
def test_gated_residual(b, n, c, dtype):
    from sana.kernels import gated_residual
    from sana.kernels.modulation.reference import gated_residual_reference

    torch.manual_seed(0)
    x, y = _x(b, n, c, dtype), _x(b, n, c, dtype)
    *_, gate = _table(b, c, dtype, dtype)  # [B, 1, C]
    out = gated_residual(x, gate, y)
    ref = gated_residual_reference(x, gate, y)
    assert out.shape == x.shape and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_residual_with_a_second_term(dtype):
    """x + gate * (y + y2) with y2 strided (the temporal conv beside the Mix-FFN output), and the ops reference,
    which rounds y + y2 first as diffusers does."""
    from sana import ops
    from sana.kernels import gated_residual
    from sana.kernels.modulation.reference import gated_residual_reference

    torch.manual_seed(0)
    x, y = _x(2, 7, 48, dtype), _x(2, 7, 48, dtype)
    y2 = _x(2, 7, 96, dtype)[..., 48:]  # row stride 96
    *_, gate = _table(2, 48, dtype, dtype)
    out = gated_residual(x, gate, y, y2)
    assert rel_err(out, gated_residual_reference(x, gate, y, y2)) < TOLERANCE[dtype]
    assert rel_err(out, gated_residual_reference(x, gate, y + y2)) < 2 * TOLERANCE[dtype]
    if dtype == torch.float32:
        torch.testing.assert_close(ops.gated_residual(x, gate, y, y2), torch.addcmul(x, gate, y + y2))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_residual_modulated_norm_with_a_second_term(dtype):
    """(x + gate * (y + y2), its modulated norm) with y2 strided: the video block's last residual fused with the
    next block's first norm; the ops reference rounds y + y2 first and adds with addcmul, as the unfused ops do."""
    from sana import ops

    torch.manual_seed(0)
    x, y = _x(2, 7, 48, dtype), _x(2, 7, 48, dtype)
    y2 = _x(2, 7, 96, dtype)[..., 48:]  # row stride 96
    shift, scale, gate, *_ = _table(2, 48, dtype, dtype)
    res, out = gated_residual_modulated_norm(x, gate, y, shift, scale, 1e-6, y2=y2)
    ref_res, ref_out = gated_residual_modulated_norm_reference(x, gate, y, shift, scale, 1e-6, y2=y2)
    assert rel_err(res, ref_res) < TOLERANCE[dtype] and rel_err(out, ref_out) < TOLERANCE[dtype]
    unfused = gated_residual_modulated_norm_reference(x, gate, y, shift, scale, 1e-6)
    assert rel_err(res, unfused[0]) > 10 * TOLERANCE[dtype]  # y2 was used
    if dtype == torch.float32:
        with torch.no_grad():
            ops.set_kernels_enabled(False)
            try:
                got = ops.gated_residual_modulated_norm(x, gate, y, shift, scale, 1e-6, y2=y2)
            finally:
                ops.set_kernels_enabled(True)
        r = torch.addcmul(x, gate, y + y2)
        torch.testing.assert_close(got[0], r)
        torch.testing.assert_close(got[1], ops.modulated_layer_norm_reference(r, shift, scale, 1e-6))
