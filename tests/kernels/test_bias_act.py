"""A conv's deferred bias and its activation in one pass, against the reference (the two unfused passes)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import bias_activation  # noqa: E402
from sana.kernels.bias_act.reference import bias_activation_reference  # noqa: E402

CL = torch.channels_last


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", [None, "silu", "relu"])
@pytest.mark.parametrize("shape", [(2, 160, 5, 3), (1, 8, 7, 9)], ids=["c160-tail", "c8"])
def test_matches_the_conv_bias_then_activation(shape, act, dtype):
    torch.manual_seed(0)
    x = (3 * torch.randn(shape, device=DEVICE)).to(dtype).contiguous(memory_format=CL)
    bias = torch.randn(shape[1], device=DEVICE).to(dtype)
    expected = bias_activation_reference(x.float(), bias.float(), act).to(dtype)
    reference = bias_activation_reference(x, bias, act)
    out = bias_activation(x.clone(memory_format=CL), bias, act)
    assert out.is_contiguous(memory_format=CL) and out.dtype == dtype
    assert rel_err(out, expected) < TOLERANCE[dtype] and rel_err(reference, expected) < 2 * TOLERANCE[dtype]


def test_in_place_over_the_conv_output_and_equal_to_the_conv_with_its_bias():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 9, 7, device=DEVICE).contiguous(memory_format=CL)
    weight, bias = torch.randn(12, 6, 3, 3, device=DEVICE), torch.randn(12, device=DEVICE)
    y = F.conv2d(x, weight, None, padding=1).contiguous(memory_format=CL)
    out = bias_activation(y, bias, "silu")
    assert out.data_ptr() == y.data_ptr()
    assert rel_err(out, F.silu(F.conv2d(x, weight, bias, padding=1))) < 1e-5
    rows = torch.randn(4, 10, 12, device=DEVICE)  # a contiguous [..., C] tensor: rows of C
    assert rel_err(bias_activation(rows.clone(), bias, "relu"), F.relu(rows + bias)) < 1e-6


def test_bad_arguments_are_value_errors():
    x = torch.randn(1, 8, 4, 4, device=DEVICE)
    with pytest.raises(ValueError, match="channels-last"):
        bias_activation(x, torch.randn(8, device=DEVICE), "silu")
    x = x.contiguous(memory_format=CL)
    with pytest.raises(ValueError, match="does not match"):
        bias_activation(x, torch.randn(7, device=DEVICE), "silu")
    with pytest.raises(ValueError, match="activation"):
        bias_activation(x, torch.randn(8, device=DEVICE), "gelu")


def test_the_op_runs_the_reference_off_cuda():
    from sana import ops

    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=CL)
    bias = torch.randn(8)
    assert not ops.defers_conv_bias(x)  # CPU tensors: the conv keeps its bias
    assert torch.equal(ops.bias_activation(x, bias, "silu"), F.silu(x + bias.view(-1, 1, 1)))
