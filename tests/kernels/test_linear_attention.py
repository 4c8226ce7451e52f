"""Fused ReLU linear attention against its fp32 reference (and the reference against diffusers)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import linear_attention  # noqa: E402
from sana.kernels.linear_attention.reference import (  # noqa: E402
    linear_attention_diffusers,
    linear_attention_reference,
)

# (batch, tokens, heads, head dim, fused): fused = q, k, v are strided views of one [B, N, 3*H*D] tensor.
# In the interpreter the launcher aims at 8 programs, so one head with a few hundred tokens gets several
# phase-1 splits (128 tokens a step at D=32, 64 at D=112) and several phase-2 chunks.
SHAPES = [
    pytest.param(1, 300, 1, 32, True, id="b1-n300-h1-d32-fused-3-splits"),
    pytest.param(1, 150, 1, 112, True, id="b1-n150-h1-d112-fused-3-splits"),
    pytest.param(1, 77, 2, 32, True, id="b1-n77-h2-d32-fused"),
    pytest.param(3, 50, 2, 112, True, id="b3-n50-h2-d112-fused"),
    pytest.param(2, 300, 3, 32, False, id="b2-n300-h3-d32-separate"),
    pytest.param(1, 128, 1, 32, True, id="b1-n128-h1-d32-whole-blocks"),
    pytest.param(2, 1, 2, 32, True, id="b2-n1-h2-d32-one-token"),
    pytest.param(1, 40, 2, 24, False, id="b1-n40-h2-d24-padded-dim"),
]


def _qkv(b, n, h, d, fused, dtype, device=DEVICE):
    if fused:
        return torch.randn(b, n, 3 * h * d, device=device).to(dtype).chunk(3, dim=-1)  # [B, N, H*D] views
    return tuple(torch.randn(b, n, h * d, device=device).to(dtype) for _ in range(3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, n, h, d, fused", SHAPES)
def test_matches_reference(b, n, h, d, fused, dtype):
    torch.manual_seed(0)
    q, k, v = _qkv(b, n, h, d, fused, dtype)
    out = linear_attention(q, k, v, h)
    ref = linear_attention_reference(q, k, v, h)
    assert out.shape == (b, n, h * d) and out.dtype == dtype and out.is_contiguous()
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOLERANCE[dtype]


def test_negative_queries_give_zero():
    """relu(q) = 0 makes numerator and normaliser 0: eps keeps the quotient at 0 instead of NaN."""
    torch.manual_seed(0)
    q, k, v = _qkv(1, 33, 2, 32, True, torch.float32)
    q = -q.abs()
    out = linear_attention(q, k, v, 2)
    assert torch.equal(out, torch.zeros_like(out))


def test_reference_is_diffusers_math():
    torch.manual_seed(0)
    q, k, v = _qkv(2, 70, 3, 32, True, torch.float32, "cpu")
    assert rel_err(linear_attention_reference(q, k, v, 3), linear_attention_diffusers(q, k, v, 3)) < 1e-6


def test_reference_matches_diffusers_processor():
    """The reference between the projections equals diffusers' SanaLinearAttnProcessor2_0 end to end."""
    processors = pytest.importorskip("diffusers.models.attention_processor")
    Attention, SanaLinearAttnProcessor2_0 = processors.Attention, processors.SanaLinearAttnProcessor2_0

    torch.manual_seed(0)
    heads, dim = 3, 32
    attn = Attention(query_dim=96, heads=heads, dim_head=dim, bias=True, processor=SanaLinearAttnProcessor2_0())
    x = torch.randn(2, 45, 96)
    with torch.no_grad():
        expected = attn(x)
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        got = attn.to_out[0](linear_attention_reference(q, k, v, heads))
    assert rel_err(got, expected) < 1e-6


def test_rejects_bad_inputs(monkeypatch):
    q, k, v = _qkv(1, 8, 2, 32, True, torch.float32)
    with pytest.raises(ValueError, match="heads=3 does not divide"):
        linear_attention(q, k, v, 3)
    with pytest.raises(ValueError, match="must all be"):
        linear_attention(q, k[:, :4], v, 2)
    with pytest.raises(ValueError, match="share a dtype"):
        linear_attention(q, k.half(), v, 2)
    with pytest.raises(ValueError, match="contiguous last dim"):
        linear_attention(q, k.transpose(1, 2).contiguous().transpose(1, 2), v, 2)
    with pytest.raises(ValueError, match="head dim 160"):
        linear_attention(*_qkv(1, 8, 1, 160, True, torch.float32), 1)
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="CUDA tensors"):
            linear_attention(q, k, v, 2)


# -- GPU, real SANA shapes ----------------------------------------------------------------------------------

GPU_SHAPES = [
    pytest.param(2, 1024, 70, 32, id="sana1.6b-1024px"),
    pytest.param(2, 4096, 70, 32, id="sana1.6b-2048px"),
    pytest.param(2, 16384, 70, 32, id="sana1.6b-4096px"),
    pytest.param(2, 8190, 20, 112, id="video-20x112-tail"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("b, n, h, d", GPU_SHAPES)
def test_gpu_bf16_real_shapes(b, n, h, d):
    torch.manual_seed(0)
    q, k, v = _qkv(b, n, h, d, True, torch.bfloat16, "cuda")
    out = linear_attention(q, k, v, h)
    ref = linear_attention_reference(q.float(), k.float(), v.float(), h)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-2
