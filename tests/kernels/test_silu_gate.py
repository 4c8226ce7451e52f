"""SANA-WM's output gate kernel against its reference (diffusers' `(x * silu(gate.float())).to(x.dtype)`)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import silu_gate  # noqa: E402
from sana.kernels.silu_gate.reference import silu_gate_reference  # noqa: E402


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 37, 24), (5000,)], ids=["b2-n37-c24", "flat-5000-tail"])
def test_matches_reference(shape, dtype):
    torch.manual_seed(0)
    x = torch.randn(shape, device=DEVICE).to(dtype)
    gate = (4 * torch.randn(shape, device=DEVICE)).to(dtype)  # both tails of the SiLU
    out = silu_gate(x, gate)
    assert out.dtype == dtype and out.shape == x.shape
    assert rel_err(out, silu_gate_reference(x.float(), gate.float()).to(dtype)) < TOLERANCE[dtype]


def test_mixed_dtypes_and_the_model_gate():
    """An fp32 x with a half gate (the product stays fp32), and ops.silu_gate's reference path off CUDA."""
    from sana import ops

    torch.manual_seed(0)
    x, gate = torch.randn(3, 40), torch.randn(3, 40).half()
    on_device = x.to(DEVICE), gate.to(DEVICE)
    assert rel_err(silu_gate(*on_device), silu_gate_reference(*on_device)) < 1e-6
    torch.testing.assert_close(ops.silu_gate(x, gate), silu_gate_reference(x, gate))  # CPU tensors: no kernel


def test_rejects_bad_inputs():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match="one shape"):
        silu_gate(x, x[:, :5])
    with pytest.raises(ValueError, match="contiguous"):
        silu_gate(x.t(), x.t())


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
def test_gpu_wm_shape_bf16():
    torch.manual_seed(0)
    x = torch.randn(2, 21 * 880, 2240, device="cuda", dtype=torch.bfloat16)
    gate = torch.randn_like(x)
    assert rel_err(silu_gate(x, gate), silu_gate_reference(x, gate)) < 1e-2
