"""DC-AE's multiscale projection kernel against its reference (the depthwise and grouped 1x1 convs)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import multiscale_projection  # noqa: E402
from sana.kernels.multiscale.reference import multiscale_projection_reference  # noqa: E402


def _inputs(b, h, w, c, d, k, dtype, *, strided=False):
    torch.manual_seed(0)
    if strided:  # x as a slice of a wider token-major tensor (the qkv projection's rows)
        x = torch.randn(b, h * w, 2 * c, device=DEVICE).to(dtype)[..., :c]
    else:
        x = torch.randn(b, h * w, c, device=DEVICE).to(dtype)
    dw = (torch.randn(c, 1, k, k, device=DEVICE) / k).to(dtype)
    pw = (torch.randn(c, d, 1, 1, device=DEVICE) / d ** 0.5).to(dtype)
    return x, dw, pw


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,h,w,c,d,k", [(1, 11, 13, 96, 32, 5), (2, 8, 8, 64, 16, 3), (1, 3, 20, 32, 32, 5)],
                         ids=["tails-k5", "one-tile-k3", "thin"])
def test_matches_reference(b, h, w, c, d, k, dtype):
    x, dw, pw = _inputs(b, h, w, c, d, k, dtype)
    out = multiscale_projection(x, h, w, dw, pw)
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    expected = multiscale_projection_reference(x.float(), h, w, dw.float(), pw.float())
    # the depthwise output is rounded to the dtype before the 1x1 conv on both sides
    assert rel_err(out, expected) < 2 * TOLERANCE[dtype]
    assert rel_err(multiscale_projection_reference(x, h, w, dw, pw), expected) < 2 * TOLERANCE[dtype]


def test_strided_tokens_and_the_reference_against_the_decoder_module():
    from sana.models.dcae import MultiscaleProjection, image, tokens

    h, w, c, d = 9, 7, 96, 32
    x, dw, pw = _inputs(2, h, w, c, d, 5, torch.float32, strided=True)
    assert rel_err(multiscale_projection(x, h, w, dw, pw), multiscale_projection_reference(x, h, w, dw, pw)) < 1e-5
    module = MultiscaleProjection(c, c // d, 5)
    with torch.no_grad():
        module.proj_in.weight.copy_(dw.cpu())
        module.proj_out.weight.copy_(pw.cpu())
        dense = x.cpu().contiguous()
        expected = tokens(module(image(dense, h, w)))
    assert torch.equal(multiscale_projection_reference(dense, h, w, dw.cpu(), pw.cpu()), expected)


def test_rejects_bad_inputs():
    x, dw, pw = _inputs(1, 4, 4, 64, 32, 5, torch.float32)
    with pytest.raises(ValueError, match="x must be"):
        multiscale_projection(x, 4, 5, dw, pw)
    with pytest.raises(ValueError, match="power of two"):
        multiscale_projection(x, 4, 4, dw, torch.randn(64, 8, 1, 1, device=DEVICE))
    with pytest.raises(ValueError, match="k odd"):
        multiscale_projection(x, 4, 4, torch.randn(64, 1, 4, 4, device=DEVICE), pw)
    with pytest.raises(ValueError, match="dtype"):
        multiscale_projection(x, 4, 4, dw.half(), pw)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
@pytest.mark.parametrize("side,c", [(32, 3072), (128, 1536), (512, 1536)], ids=["1024px-s5", "1024px-s3", "4096px-s3"])
def test_gpu_dcae_shapes_bf16(side, c):
    """SANA's f32c32 decoder: the qkv of its EfficientViT stages (3 x 1024 and 3 x 512 channels, heads of 32)."""
    x, dw, pw = _inputs(1, side, side, c, 32, 5, torch.bfloat16)
    out = multiscale_projection(x, side, side, dw, pw)
    assert rel_err(out, multiscale_projection_reference(x.float(), side, side, dw.float(), pw.float())) < 2e-2
