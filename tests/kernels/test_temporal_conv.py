"""SANA-Video's temporal conv as an implicit GEMM: the kernel against its reference (the channels-last conv the
model ran before) and against the formula."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import temporal_conv  # noqa: E402
from sana.kernels.temporal_conv.reference import pack_weight, temporal_conv_reference  # noqa: E402
from sana.kernels.temporal_conv.triton import LAUNCH_SHAPES, LaunchShape  # noqa: E402

# (batch, frames, tokens a frame, channels in, channels out). The interpreter's tiles are 16 x 16 x 16: S = 7 puts
# frame edges inside tiles, C = 40 leaves a K tail, C_out = 24 a column tail; one frame has only the centre tap.
SHAPES = [
    pytest.param(2, 3, 7, 40, 40, id="b2-f3-s7-c40"),
    pytest.param(1, 5, 4, 32, 24, id="f5-s4-c32-out24"),
    pytest.param(1, 1, 9, 16, 16, id="one-frame"),
    pytest.param(2, 2, 13, 48, 48, id="f2-s13"),
]


def _inputs(b, f, s, c, c_out, dtype, device=DEVICE, seed=0):
    gen = torch.Generator(device).manual_seed(seed)
    y = torch.randn(b, f * s, c, generator=gen, device=device).to(dtype)
    weight = (torch.randn(c_out, c, 3, 1, generator=gen, device=device) / (3 * c) ** 0.5).to(dtype)
    return y, weight


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "descriptors"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, f, s, c, c_out", SHAPES)
def test_matches_reference(b, f, s, c, c_out, dtype, tma):
    y, weight = _inputs(b, f, s, c, c_out, dtype)
    out = temporal_conv(y, weight, s, launch=LaunchShape(tma=tma))
    # fp64: cuDNN's fp32 conv may round through TF32 on a GPU (torch's default for convs)
    exact = temporal_conv_reference(y.double(), weight.double(), s)
    assert out.shape == (b, f * s, c_out) and out.dtype == dtype and out.is_contiguous()
    assert rel_err(out, exact) < TOLERANCE[dtype]
    if dtype != torch.float32:  # one rounding of the fp32 sum, as the conv's own (fp32: the order of the sums)
        assert rel_err(out, exact) <= 1.01 * rel_err(exact.to(dtype), exact) + 1e-7


@pytest.mark.parametrize("tma", [False, True], ids=["pointers", "descriptors"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_add_input_rounds_as_the_module_does(dtype, tma):
    """y + conv(y): the conv rounded to y's dtype, then the sum rounded (the reference's two roundings)."""
    y, weight = _inputs(2, 3, 7, 40, 40, dtype)
    out = temporal_conv(y, weight, 7, add_input=True, packed=pack_weight(weight), launch=LaunchShape(tma=tma))
    conv = temporal_conv_reference(y.double(), weight.double(), 7).to(dtype)
    expected = (conv.double() + y.double()).to(dtype)
    if dtype == torch.float32:
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    else:  # the conv's rounding may differ in the last bit where the fp32 sums differ in order
        assert rel_err(out, expected) < TOLERANCE[dtype] / 4


def test_it_is_the_conv_over_frames():
    """Against the formula: conv[f] = W0 y[f-1] + W1 y[f] + W2 y[f+1], y zero outside the clip."""
    y, weight = _inputs(1, 4, 3, 16, 16, torch.float32)
    out = temporal_conv(y, weight, 3).reshape(4, 3, 16)
    frames = y.reshape(4, 3, 16)
    for f in range(4):
        expected = frames[f] @ weight[:, :, 1, 0].T
        if f > 0:
            expected = expected + frames[f - 1] @ weight[:, :, 0, 0].T
        if f < 3:
            expected = expected + frames[f + 1] @ weight[:, :, 2, 0].T
        torch.testing.assert_close(out[f], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(DEVICE != "cuda", reason="launch shapes are a GPU matter (the interpreter uses small tiles)")
@pytest.mark.parametrize("launch", LAUNCH_SHAPES, ids=str)
def test_every_launch_shape_matches_on_a_gpu(launch):
    y, weight = _inputs(2, 5, 7 * 13, 320, 320, torch.bfloat16)
    out = temporal_conv(y, weight, 7 * 13, add_input=True, launch=launch)
    exact = y.float() + temporal_conv_reference(y.float(), weight.float(), 7 * 13)
    assert rel_err(out, exact) < TOLERANCE[torch.bfloat16]


def test_bad_arguments_are_refused():
    y, weight = _inputs(1, 3, 4, 16, 16, torch.float32)
    with pytest.raises(ValueError, match="do not split into frames"):
        temporal_conv(y, weight, 5)
    with pytest.raises(ValueError, match=r"\[C_out, C, 3, 1\]"):
        temporal_conv(y, weight[..., :2, :], 4)
    with pytest.raises(ValueError, match="add_input needs C_out == C"):
        temporal_conv(y, torch.randn(8, 16, 3, 1, device=DEVICE), 4, add_input=True)


def test_hopper_takes_the_swept_launch_shape(monkeypatch):
    from sana.kernels.temporal_conv import triton as kernel

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert kernel._default_launch(torch.device("cuda")) == kernel.HOPPER_LAUNCH
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert kernel._default_launch(torch.device("cuda")) == LAUNCH_SHAPES[0]
    assert kernel._default_launch(torch.device("cpu")) == LAUNCH_SHAPES[0]
