"""SANA-WM's symmetric short conv over frames: the kernel against its reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import short_conv  # noqa: E402
from sana.kernels.short_conv.reference import short_conv_reference  # noqa: E402

# (batch, frames, tokens a frame, channels, taps, fused). The kernel takes 32 tokens and 128 channels a program:
# S = 37 and C = 150 leave tails; T = 2 < K - 1 has taps that reach past both ends; T = 1 only the centre.
SHAPES = [
    pytest.param(2, 5, 37, 150, 4, True, id="b2-t5-s37-c150-k4-fused"),
    pytest.param(1, 2, 9, 24, 4, False, id="t2-shorter-than-taps"),
    pytest.param(1, 1, 16, 32, 4, False, id="one-frame"),
    pytest.param(1, 6, 8, 16, 2, False, id="k2"),
]


def _inputs(b, t, s, c, k, fused, dtype, device=DEVICE, seed=0):
    """x as the model feeds it: the k of a fused [B, N, 3, C] projection (token stride 3 C) when fused."""
    gen = torch.Generator(device).manual_seed(seed)
    if fused:
        x = torch.randn(b, t * s, 3, c, generator=gen, device=device).to(dtype)[:, :, 1]
    else:
        x = torch.randn(b, t * s, c, generator=gen, device=device).to(dtype)
    weight = (torch.randn(c, 1, k, generator=gen, device=device) / k).to(dtype)
    return x, weight


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, t, s, c, k, fused", SHAPES)
def test_matches_reference(b, t, s, c, k, fused, dtype):
    x, weight = _inputs(b, t, s, c, k, fused, dtype)
    out = short_conv(x, weight, t)
    # The exact answer (fp32 on the same inputs); the kernel rounds it once, the reference each of its terms.
    exact = short_conv_reference(x.float(), weight.float(), t)
    assert out.shape == x.shape and out.dtype == dtype and out.is_contiguous()
    assert rel_err(out, exact) < TOLERANCE[dtype]
    assert rel_err(out, exact) <= 1.01 * rel_err(exact.to(dtype), exact) + 1e-7


def test_it_is_the_symmetric_stencil():
    """Against the formula itself: y[t] = w[K-1] x[t] + sum_j w[K-1-j] (x[t-j] + x[t+j]), zero padded."""
    x, weight = _inputs(1, 5, 3, 4, 3, False, torch.float32)
    out = short_conv(x, weight, 5).reshape(5, 3, 4)
    frames, w = x.reshape(5, 3, 4), weight[:, 0]  # [T, S, C], [C, K]
    for t in range(5):
        expected = w[:, 2] * frames[t]
        for j in (1, 2):
            for u in (t - j, t + j):
                if 0 <= u < 5:
                    expected = expected + w[:, 2 - j] * frames[u]
        torch.testing.assert_close(out[t], expected, rtol=1e-6, atol=1e-6)


def test_the_model_module_uses_it():
    """TemporalShortConv dispatches through ops.short_conv: the reference off CUDA, the same numbers."""
    from sana.models.world_attention import TemporalShortConv

    x, weight = _inputs(2, 4, 6, 8, 4, True, torch.float32)
    module = TemporalShortConv(8, 4).to(x.device)
    with torch.no_grad():
        module.weight.copy_(weight)
        torch.testing.assert_close(module(x, 4), short_conv(x, weight, 4), rtol=1e-5, atol=1e-6)


def test_rejects_bad_inputs():
    x, weight = _inputs(1, 2, 4, 8, 4, False, torch.float32)
    with pytest.raises(ValueError, match="do not split into 3 frames"):
        short_conv(x, weight, 3)
    with pytest.raises(ValueError, match="weight must be"):
        short_conv(x, weight[:4], 2)
    with pytest.raises(ValueError, match="x must be"):
        short_conv(x[0], weight, 2)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
def test_gpu_wm_shape_bf16():
    x, weight = _inputs(2, 21, 880, 2240, 4, True, torch.bfloat16, "cuda")
    out = short_conv(x, weight, 21)
    exact = short_conv_reference(x.float(), weight.float(), 21)
    assert rel_err(out, exact) <= 1.01 * rel_err(exact.bfloat16(), exact)
    assert rel_err(out, short_conv_reference(x, weight, 21)) < 1e-2  # the model's bf16 arithmetic
