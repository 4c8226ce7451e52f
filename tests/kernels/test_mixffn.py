"""Fused Mix-FFN middle (SiLU, depthwise 3x3, GLU) against its fp32 reference (and diffusers' GLUMBConv)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import mixffn_middle  # noqa: E402
from sana.kernels.mixffn.reference import mixffn_middle_diffusers, mixffn_middle_reference  # noqa: E402
from sana.kernels.mixffn.triton import Config  # noqa: E402

# Launch shapes small enough that the test shapes cross row-chunk, column-tile and channel-block edges, and with
# several tokens a phase (the defaults take one).
CONFIGS = [
    pytest.param(Config(4, 1, 16, 4), id="rows4-j1-c16"),
    pytest.param(Config(32, 2, 32, 4), id="rows32-j2-c32"),
]

# (batch, height, width, Hd): odd sides, a one-token image, tails of rows, columns and channels.
SHAPES = [
    pytest.param(1, 5, 7, 40, id="b1-5x7-hd40-odd-sides"),
    pytest.param(3, 4, 4, 16, id="b3-4x4-hd16"),
    pytest.param(1, 35, 3, 16, id="b1-35x3-hd16-row-chunk-tail"),
    pytest.param(1, 3, 19, 8, id="b1-3x19-hd8-width-tile-tail"),
    pytest.param(2, 1, 1, 8, id="b2-1x1-hd8-one-token"),
]


def _inputs(b, height, width, hd, dtype, device=DEVICE):
    h = torch.randn(b, height * width, 2 * hd, device=device).to(dtype)
    weight = (torch.randn(2 * hd, 1, 3, 3, device=device) / 3).to(dtype)
    bias = torch.randn(2 * hd, device=device).to(dtype)
    return h, weight, bias


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, height, width, hd", SHAPES)
def test_matches_reference(b, height, width, hd, dtype):
    torch.manual_seed(0)
    h, weight, bias = _inputs(b, height, width, hd, dtype)
    out = mixffn_middle(h, height, width, weight, bias)
    ref = mixffn_middle_reference(h, height, width, weight, bias)
    assert out.shape == (b, height * width, hd) and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("b, height, width, hd", SHAPES)
def test_every_kernel_kind_matches_reference(b, height, width, hd, config):
    torch.manual_seed(0)
    h, weight, bias = _inputs(b, height, width, hd, torch.float32)
    out = mixffn_middle(h, height, width, weight, bias, config=config)
    assert rel_err(out, mixffn_middle_reference(h, height, width, weight, bias)) < 1e-5


def test_strided_tokens():
    """h may be a strided view (here every other channel block of a wider tensor); the last dim is contiguous."""
    torch.manual_seed(0)
    wide, weight, bias = _inputs(2, 3, 5, 16, torch.float32)
    h = torch.cat([wide, wide], dim=-1)[..., :32]  # [2, 15, 32], token stride 64
    assert h.stride(1) == 64
    assert rel_err(mixffn_middle(h, 3, 5, weight, bias), mixffn_middle_reference(h, 3, 5, weight, bias)) < 1e-5


def test_reference_is_diffusers_glumbconv():
    """fp32: conv_point(reference(conv_inverted(x))) on token-major data equals diffusers' GLUMBConv on NCHW."""
    GLUMBConv = pytest.importorskip("diffusers.models.transformers.sana_transformer").GLUMBConv

    torch.manual_seed(0)
    b, c, height, width = 2, 16, 5, 6
    ff = GLUMBConv(c, c, 2.5, norm_type=None, residual_connection=False)
    x = torch.randn(b, c, height, width)
    with torch.no_grad():
        expected = ff(x)  # [B, C, H, W]
        tokens = x.flatten(2).transpose(1, 2)  # [B, N, C]
        inv = ff.conv_inverted
        h = torch.nn.functional.linear(tokens, inv.weight[:, :, 0, 0], inv.bias)  # [B, N, 2Hd]
        mid = mixffn_middle_reference(h, height, width, ff.conv_depth.weight, ff.conv_depth.bias)
        got = torch.nn.functional.linear(mid, ff.conv_point.weight[:, :, 0, 0])  # [B, N, C]
        assert rel_err(got.transpose(1, 2).reshape(b, c, height, width), expected) < 1e-6
        assert rel_err(mixffn_middle_diffusers(h, height, width, ff.conv_depth.weight, ff.conv_depth.bias), mid) < 1e-6


def test_rejects_bad_inputs():
    h, weight, bias = _inputs(1, 3, 4, 8, torch.float32)
    with pytest.raises(ValueError, match="must equal N"):
        mixffn_middle(h, 4, 4, weight, bias)
    with pytest.raises(ValueError, match=r"dw_weight must be \[16, 1, 3, 3\]"):
        mixffn_middle(h, 3, 4, weight[:, :, :2], bias)
    with pytest.raises(ValueError, match=r"dw_bias must be \[16\]"):
        mixffn_middle(h, 3, 4, weight, bias[:8])
    with pytest.raises(ValueError, match="must be even"):
        mixffn_middle(h[..., :15], 3, 4, weight[:15], bias[:15])
    with pytest.raises(ValueError, match="contiguous last dim"):
        mixffn_middle(h.transpose(1, 2).contiguous().transpose(1, 2), 3, 4, weight, bias)


# -- GPU, real SANA shapes ----------------------------------------------------------------------------------

GPU_SHAPES = [
    pytest.param(2, 32, 32, 5600, id="sana1.6b-1024px"),
    pytest.param(2, 64, 64, 5600, id="sana1.6b-2048px"),
    pytest.param(2, 128, 128, 5600, id="sana1.6b-4096px"),
    pytest.param(1, 33, 47, 2880, id="sana0.6b-odd-sides"),
    pytest.param(42, 30, 52, 5600, id="video2b-480p"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("config", [None, Config(16, 1, 128, 4), Config(32, 4, 64, 4)],
                         ids=["default", "small-grid", "j4"])
@pytest.mark.parametrize("b, height, width, hd", GPU_SHAPES)
def test_gpu_bf16_real_shapes(b, height, width, hd, config):
    torch.manual_seed(0)
    h, weight, bias = _inputs(b, height, width, hd, torch.bfloat16, "cuda")
    out = mixffn_middle(h, height, width, weight, bias, config=config)
    ref = mixffn_middle_reference(h.float(), height, width, weight.float(), bias.float())
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-2
