"""The DC-AE's RMSNorm + affine (+ residual) kernel against its fp32 reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import rms_norm_affine  # noqa: E402
from sana.kernels.rms_norm.reference import rms_norm_affine_reference  # noqa: E402

SHAPES = [
    pytest.param((1, 7, 12), id="n7-c12"),
    pytest.param((2, 33, 128), id="b2-n33-c128-dcae-full-res"),
    pytest.param((1, 5, 200), id="n5-c200"),
    pytest.param((3, 2, 1024), id="b3-n2-c1024-dcae-deepest"),
]


def _inputs(shape, dtype):
    c = shape[-1]
    x = (torch.randn(shape, device=DEVICE) * 3 + 0.5).to(dtype)
    weight = (1 + 0.5 * torch.randn(c, device=DEVICE)).to(dtype)
    bias = (0.1 * torch.randn(c, device=DEVICE)).to(dtype)
    return x, weight, bias


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(shape, dtype, residual):
    torch.manual_seed(0)
    x, weight, bias = _inputs(shape, dtype)
    res = torch.randn(shape, device=DEVICE).to(dtype) if residual else None
    out = rms_norm_affine(x, weight, bias, 1e-5, res)
    ref = rms_norm_affine_reference(x, weight, bias, 1e-5, res)
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_token_views_of_channels_last_images(dtype):
    """The decoder passes [B, H*W, C] views of channels-last [B, C, H, W] images, not contiguous copies."""
    torch.manual_seed(0)
    image = torch.randn(2, 24, 5, 7, device=DEVICE).to(dtype).contiguous(memory_format=torch.channels_last)
    skip = torch.randn(2, 24, 5, 7, device=DEVICE).to(dtype).contiguous(memory_format=torch.channels_last)
    x = image.permute(0, 2, 3, 1).reshape(2, 35, 24)
    res = skip.permute(0, 2, 3, 1).reshape(2, 35, 24)
    assert x.data_ptr() == image.data_ptr()  # a view
    _, weight, bias = _inputs((24,), dtype)
    out = rms_norm_affine(x, weight, bias, 1e-5, res)
    ref = rms_norm_affine_reference(x.contiguous(), weight, bias, 1e-5, res.contiguous())
    assert rel_err(out, ref) < TOLERANCE[dtype]


def test_weight_bias_in_fp32_with_half_x():
    torch.manual_seed(0)
    x, weight, bias = _inputs((2, 9, 64), torch.float16)
    out = rms_norm_affine(x, weight.float(), bias.float())
    assert out.dtype == torch.float16
    assert rel_err(out, rms_norm_affine_reference(x, weight.float(), bias.float())) < TOLERANCE[torch.float16]


def test_bad_arguments_are_value_errors():
    x, weight, bias = _inputs((2, 4, 16), torch.float32)
    with pytest.raises(ValueError, match="weight must be"):
        rms_norm_affine(x, weight[:8], bias)
    with pytest.raises(ValueError, match="residual must match"):
        rms_norm_affine(x, weight, bias, residual=x[:1])
    with pytest.raises(ValueError, match="contiguous last dim"):
        rms_norm_affine(x.transpose(1, 2), torch.ones(4, device=DEVICE), torch.zeros(4, device=DEVICE))


@pytest.mark.parametrize("dtype", DTYPES)
def test_without_bias_on_a_column_slice(dtype):
    """The DiT's q/k norms: no bias, on the q columns of a fused qkv projection (rows strided by 3C)."""
    torch.manual_seed(0)
    qkv = torch.randn(2, 9, 3 * 40, device=DEVICE).to(dtype)
    q = qkv[..., :40]
    _, weight, _ = _inputs((40,), dtype)
    out = rms_norm_affine(q, weight, None, 1e-5)
    assert out.is_contiguous()
    assert rel_err(out, rms_norm_affine_reference(q, weight, None, 1e-5)) < TOLERANCE[dtype]
