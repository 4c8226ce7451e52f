"""The DC-AE up block's phase assembly kernel against its PyTorch reference, and the reference against a nearest
upsampling followed by the 3x3 conv."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import assemble_phases  # noqa: E402
from sana.kernels.upsample.reference import assemble_phases_reference  # noqa: E402
from sana.models.dcae import nearest_conv_phases  # noqa: E402

CL = torch.channels_last

# (batch, Cin, Cout, h, w): shortcut repeats 2 (a channel stride), 4 (the input itself), 1 and 3 (a gather),
# odd sides, Cout not a power of two and wider than a channel block.
SHAPES = [
    pytest.param(1, 16, 8, 3, 5, id="repeats2"),
    pytest.param(2, 8, 8, 4, 3, id="repeats4"),
    pytest.param(1, 36, 9, 2, 2, id="repeats1"),
    pytest.param(1, 12, 9, 3, 2, id="repeats3"),
    pytest.param(1, 24, 96, 2, 3, id="cout96"),
]


@pytest.mark.parametrize("with_skip", [True, False], ids=["shortcut", "plain"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, cin, cout, h, w", SHAPES)
def test_matches_reference(b, cin, cout, h, w, dtype, with_skip):
    torch.manual_seed(0)
    y = torch.randn(b, 4 * cout, h + 1, w + 1, device=DEVICE).to(dtype).contiguous(memory_format=CL)
    skip = torch.randn(b, cin, h, w, device=DEVICE).to(dtype).contiguous(memory_format=CL) if with_skip else None
    if with_skip and (4 * cout) % cin:
        pytest.skip("not an up block shape")
    out = assemble_phases(y, skip)
    ref = assemble_phases_reference(y, skip)
    assert out.shape == (b, cout, 2 * h, 2 * w) and out.dtype == dtype
    assert out.is_contiguous(memory_format=CL)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("with_skip", [True, False], ids=["shortcut", "plain"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_deferred_conv_bias_is_added_while_assembling(dtype, with_skip):
    """The phase conv run without its bias: the kernel adds it (fp32, one rounding) and the reference as the conv
    would; both equal assembling the conv's output with the bias."""
    torch.manual_seed(0)
    b, cin, cout, h, w = 1, 24, 96, 3, 2
    y = torch.randn(b, 4 * cout, h + 1, w + 1, device=DEVICE).to(dtype).contiguous(memory_format=CL)
    skip = torch.randn(b, cin, h, w, device=DEVICE).to(dtype).contiguous(memory_format=CL) if with_skip else None
    bias = torch.randn(4 * cout, device=DEVICE).to(dtype)
    expected = assemble_phases_reference(y.float() + bias.float().view(-1, 1, 1),
                                         None if skip is None else skip.float())
    reference = assemble_phases_reference(y, skip, bias)
    assert torch.equal(reference, assemble_phases_reference(y + bias.view(-1, 1, 1), skip))
    out = assemble_phases(y, skip, bias)
    assert out.is_contiguous(memory_format=CL) and out.dtype == dtype
    assert rel_err(out, expected) < TOLERANCE[dtype] and rel_err(reference, expected) < TOLERANCE[dtype]
    with pytest.raises(ValueError, match="bias must be"):
        assemble_phases(y, skip, bias[:-1])


@pytest.mark.parametrize("b, cin, cout, h, w", SHAPES)
def test_reference_is_the_upsampled_conv_plus_shortcut(b, cin, cout, h, w):
    """The spec itself, in fp64: phase convs + assembly = interpolate -> 3x3 conv -> + diffusers' shortcut."""
    torch.manual_seed(0)
    x = torch.randn(b, cin, h, w, dtype=torch.float64)
    weight, bias = torch.randn(cout, cin, 3, 3, dtype=torch.float64), torch.randn(cout, dtype=torch.float64)
    phases, phase_bias = nearest_conv_phases(weight, bias)
    got = assemble_phases_reference(F.conv2d(x, phases, phase_bias, padding=1), x)
    up = F.interpolate(x, scale_factor=2, mode="nearest")
    shortcut = F.pixel_shuffle(x.repeat_interleave(4 * cout // cin, dim=1), 2)
    expected = F.conv2d(up, weight, bias, padding=1) + shortcut
    assert (got - expected).abs().max() < 1e-12


def test_bad_arguments_are_value_errors():
    y = torch.randn(1, 32, 4, 4, device=DEVICE).contiguous(memory_format=CL)
    with pytest.raises(ValueError, match="channels-last"):
        assemble_phases(torch.randn(1, 32, 4, 4, device=DEVICE))
    with pytest.raises(ValueError, match="skip must be"):
        assemble_phases(y, torch.randn(1, 5, 3, 3, device=DEVICE).contiguous(memory_format=CL))
