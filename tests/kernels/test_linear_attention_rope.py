"""Fused ReLU linear attention with RoPE (SANA-Video) against its reference (and the reference against diffusers)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import linear_attention_rope  # noqa: E402
from sana.kernels.linear_attention_rope.reference import linear_attention_rope_reference  # noqa: E402
from sana.kernels.linear_attention_rope.triton import Config  # noqa: E402

# (batch, tokens, heads, head dim, fused): fused = q, k, v are strided views of one [B, N, 3*H*D] tensor.
# In the interpreter the launcher aims at 8 programs, so one head with a few hundred tokens gets several
# phase-1 splits (128 tokens a step at D <= 32, 64 at D = 112) and several phase-2 chunks of 64.
SHAPES = [
    pytest.param(1, 300, 1, 32, True, id="b1-n300-h1-d32-fused-3-splits"),
    pytest.param(1, 150, 1, 112, True, id="b1-n150-h1-d112-fused-3-splits-tail"),
    pytest.param(2, 50, 2, 112, False, id="b2-n50-h2-d112-separate"),
    pytest.param(1, 77, 2, 16, True, id="b1-n77-h2-d16-fused-tail"),
    pytest.param(2, 40, 2, 24, False, id="b2-n40-h2-d24-separate-padded-dim"),
    pytest.param(1, 128, 1, 32, True, id="b1-n128-h1-d32-whole-blocks"),
    pytest.param(2, 1, 2, 112, True, id="b2-n1-h2-d112-one-token"),
]


def _qkv(b, n, h, d, fused, dtype, device=DEVICE):
    if fused:
        return torch.randn(b, n, 3 * h * d, device=device).to(dtype).chunk(3, dim=-1)  # [B, N, H*D] views
    return tuple(torch.randn(b, n, h * d, device=device).to(dtype) for _ in range(3))


def _tables(n, d, device=DEVICE, dtype=torch.float32):
    """cos, sin [N, D]: one random angle a pair, repeated in its two channels (as diffusers' tables hold them)."""
    angles = torch.rand(n, d // 2, device=device) * (2 * math.pi)
    return (angles.cos().repeat_interleave(2, dim=-1).to(dtype),
            angles.sin().repeat_interleave(2, dim=-1).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, n, h, d, fused", SHAPES)
def test_matches_reference(b, n, h, d, fused, dtype):
    torch.manual_seed(0)
    q, k, v = _qkv(b, n, h, d, fused, dtype)
    cos, sin = _tables(n, d)
    out = linear_attention_rope(q, k, v, cos, sin, h)
    ref = linear_attention_rope_reference(q, k, v, cos, sin, h)
    assert out.shape == (b, n, h * d) and out.dtype == dtype and out.is_contiguous()
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOLERANCE[dtype]


def test_tables_in_input_dtype_and_strided():
    """Half tables, rows of a longer table with a row stride of its own: the same result as the reference."""
    torch.manual_seed(0)
    q, k, v = _qkv(1, 90, 2, 24, True, torch.float16)
    cos, sin = (t.to(torch.float16) for t in _tables(90, 48))
    cos, sin = cos[:, :24], sin[:, 24:]  # [N, D] views, row stride 48
    out = linear_attention_rope(q, k, v, cos, sin, 2)
    assert rel_err(out, linear_attention_rope_reference(q, k, v, cos, sin, 2)) < TOLERANCE[torch.float16]


def test_uses_only_the_channels_the_reference_uses():
    """cos[:, 1::2] and sin[:, 0::2] do not enter the result: NaN there leaves the output unchanged."""
    torch.manual_seed(0)
    q, k, v = _qkv(1, 70, 2, 16, True, torch.float32)
    cos, sin = _tables(70, 16)
    expected = linear_attention_rope(q, k, v, cos, sin, 2)
    cos[:, 1::2] = float("nan")
    sin[:, 0::2] = float("nan")
    assert torch.equal(linear_attention_rope(q, k, v, cos, sin, 2), expected)


def test_zero_angles_is_plain_linear_attention():
    """cos = 1, sin = 0 rotates nothing: the op reduces to SANA's image linear attention."""
    from sana.kernels import linear_attention

    torch.manual_seed(0)
    q, k, v = _qkv(1, 100, 2, 32, True, torch.float32)
    ones = torch.ones(100, 32, device=DEVICE)
    out = linear_attention_rope(q, k, v, ones, torch.zeros_like(ones), 2)
    assert rel_err(out, linear_attention(q, k, v, 2)) < 1e-6


def test_negative_queries_give_zero():
    """relu(q) = 0 makes numerator and normaliser 0: eps keeps the quotient at 0 instead of NaN."""
    torch.manual_seed(0)
    q, k, v = _qkv(1, 33, 2, 16, True, torch.float32)
    cos, sin = _tables(33, 16)
    out = linear_attention_rope(-q.abs(), k, v, cos, sin, 2)
    assert torch.equal(out, torch.zeros_like(out))


def test_reference_matches_diffusers_processor():
    """The reference between the projections equals diffusers' SanaLinearAttnProcessor3_0 end to end."""
    video = pytest.importorskip("diffusers.models.transformers.transformer_sana_video")
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    heads, dim, n = 3, 16, 45
    attn = Attention(query_dim=48, heads=heads, dim_head=dim, bias=True,
                     processor=video.SanaLinearAttnProcessor3_0())
    x = torch.randn(2, n, 48)
    cos, sin = _tables(n, dim, "cpu")
    with torch.no_grad():
        expected = attn(x, rotary_emb=(cos[None, :, None], sin[None, :, None]))  # tables [1, N, 1, D]
        q, k, v = attn.to_q(x), attn.to_k(x), attn.to_v(x)
        got = attn.to_out[0](linear_attention_rope_reference(q, k, v, cos, sin, heads))
    assert rel_err(got, expected) < 1e-6


@pytest.mark.parametrize("config, dtype", [
    (Config(32, 32, kv_warps=2, out_warps=8, kv_stages=1, out_stages=2, programs_per_sm=1), torch.float32),
    (Config(128, 16, kv_warps=8, out_warps=2, kv_stages=2, out_stages=1, programs_per_sm=8), torch.float16),
], ids=str)
def test_launch_shapes_agree(config, dtype):
    """Launch shapes a sweep may pick compute the same op (each in a dtype whose tiles fit an H200's shared
    memory at D = 112)."""
    torch.manual_seed(0)
    q, k, v = _qkv(2, 200, 2, 112, True, dtype)
    cos, sin = _tables(200, 112)
    out = linear_attention_rope(q, k, v, cos, sin, 2, config=config)
    assert rel_err(out, linear_attention_rope_reference(q, k, v, cos, sin, 2)) < TOLERANCE[dtype]


def test_rejects_bad_inputs(monkeypatch):
    q, k, v = _qkv(1, 8, 2, 16, True, torch.float32)
    cos, sin = _tables(8, 16)
    with pytest.raises(ValueError, match="heads=3 does not divide"):
        linear_attention_rope(q, k, v, cos, sin, 3)
    with pytest.raises(ValueError, match="must all be"):
        linear_attention_rope(q, k[:, :4], v, cos, sin, 2)
    with pytest.raises(ValueError, match="share a dtype"):
        linear_attention_rope(q, k.half(), v, cos, sin, 2)
    with pytest.raises(ValueError, match="cos, sin must be"):
        linear_attention_rope(q, k, v, cos[:4], sin[:4], 2)
    with pytest.raises(ValueError, match="contiguous last dim"):
        linear_attention_rope(q, k, v, cos, sin.t().contiguous().t(), 2)
    with pytest.raises(ValueError, match="head dim 15"):
        linear_attention_rope(*_qkv(1, 8, 2, 15, True, torch.float32), *_tables(8, 15), 2)
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="CUDA tensors"):
            linear_attention_rope(q, k, v, cos, sin, 2)


# -- GPU, real SANA-Video shapes ----------------------------------------------------------------------------

GPU_SHAPES = [
    pytest.param(2, 21 * 30 * 52, 20, 112, id="video-480p-81f"),
    pytest.param(2, 8190, 20, 112, id="video-20x112-tail"),
    pytest.param(1, 4000, 8, 32, id="d32"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("b, n, h, d", GPU_SHAPES)
def test_gpu_bf16_real_shapes(b, n, h, d):
    torch.manual_seed(0)
    q, k, v = _qkv(b, n, h, d, True, torch.bfloat16, "cuda")
    cos, sin = _tables(n, d, "cuda")
    out = linear_attention_rope(q, k, v, cos, sin, h)
    # The exact answer for these bf16 inputs (tables rounded to bf16, as both implementations use them).
    cos, sin = cos.bfloat16().float(), sin.bfloat16().float()
    ref = linear_attention_rope_reference(q.float(), k.float(), v.float(), cos, sin, h)
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < 1e-2
    # ...and no further from it than the bf16 reference (diffusers' arithmetic) is.
    assert rel_err(out, ref) <= rel_err(linear_attention_rope_reference(q, k, v, cos, sin, h), ref)


@pytest.mark.gpu
def test_gpu_batch_offsets_past_int32():
    """A batch stride of more than 2**31 elements (a wide fused buffer): the batch and token offsets need 64 bits."""
    torch.manual_seed(0)
    b, n, h, d, width = 2, 66000, 2, 112, 1 << 15  # batch stride 66000 * 32768 > 2**31
    buf = torch.empty(b, n, width, device="cuda", dtype=torch.bfloat16)
    q, k, v = buf[..., : 3 * h * d].normal_().chunk(3, dim=-1)
    cos, sin = _tables(n, d, "cuda", torch.bfloat16)
    out = linear_attention_rope(q, k, v, cos, sin, h)
    ref = linear_attention_rope_reference(q.float(), k.float(), v.float(), cos.float(), sin.float(), h)
    assert rel_err(out, ref) < 1e-2
