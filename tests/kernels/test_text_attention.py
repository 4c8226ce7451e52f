"""The cross-attention kernel against its reference (SDPA with the models' head split and join)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import text_attention  # noqa: E402
from sana.kernels.text_attention.reference import text_attention_reference  # noqa: E402


def _inputs(b, n, heads, length, d, dtype, *, fused=False, shared_text=False):
    torch.manual_seed(0)
    if fused:  # q as the first third of a fused projection: token stride 3 H*D
        q = torch.randn(b, n, 3 * heads * d, device=DEVICE).to(dtype)[..., : heads * d]
    else:
        q = torch.randn(b, n, heads * d, device=DEVICE).to(dtype)
    rows = 1 if shared_text else b
    # keys and values as the models make them: a [B, L, H*D] projection split into heads (transposed views)
    k, v = (torch.randn(rows, length, heads * d, device=DEVICE).to(dtype).unflatten(-1, (heads, d)).transpose(1, 2)
            for _ in range(2))
    if shared_text:
        k, v = k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)
    return q, k, v


def _padding_bias(b, length, dtype, valid):
    keep = torch.arange(length, device=DEVICE)[None, :] < torch.tensor(valid, device=DEVICE)[:, None]
    return ((1 - keep.to(dtype)) * -10000.0)[:, None, None, :], keep[:, None, None, :]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mask", ["none", "bias", "bool"])
@pytest.mark.parametrize("b,n,heads,length,d", [(2, 37, 3, 45, 32), (1, 130, 2, 300, 32), (2, 20, 2, 70, 24)],
                         ids=["tails", "300-keys", "head-dim-24"])
def test_matches_reference(b, n, heads, length, d, mask, dtype):
    q, k, v = _inputs(b, n, heads, length, d, dtype)
    bias, keep = _padding_bias(b, length, dtype, [length - 7, 5][:b])
    given = {"none": None, "bias": bias, "bool": keep}[mask]
    out = text_attention(q, k, v, heads, given)
    assert out.shape == q.shape and out.dtype == dtype and out.is_contiguous()
    reference = text_attention_reference(q.float(), k.float(), v.float(), heads,
                                         given if given is None or given.dtype == torch.bool else given.float())
    assert rel_err(out, reference.to(dtype)) < TOLERANCE[dtype] * (1 if dtype == torch.float32 else 2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strided_queries_a_shared_text_and_a_broadcast_bias(dtype):
    """q read from a fused projection, one text's keys for every image (batch stride 0), a [1, 1, 1, L] bias."""
    heads, d, length = 4, 32, 50
    q, k, v = _inputs(3, 33, heads, length, d, dtype, fused=True, shared_text=True)
    bias, _ = _padding_bias(1, length, dtype, [41])
    out = text_attention(q, k, v, heads, bias)
    reference = text_attention_reference(q.float(), k.float(), v.float(), heads, bias.float())
    assert rel_err(out, reference.to(dtype)) < TOLERANCE[dtype] * (1 if dtype == torch.float32 else 2)
    assert torch.equal(text_attention(q, k[:1], v[:1], heads, bias), out)  # a batch of one, broadcast


@pytest.mark.parametrize("launch", [(32, 16, 4, 2), (16, 64, 4, 2)], ids=["tall", "wide"])
def test_other_launch_shapes_and_a_wide_head(launch):
    """Blocks smaller than the keys and rows, and a head dim of 112 padded to 128 lanes (SANA 1.6B's)."""
    q, k, v = _inputs(2, 50, 2, 70, 112, torch.float32)
    bias, _ = _padding_bias(2, 70, torch.float32, [70, 9])
    out = text_attention(q, k, v, 2, bias, launch=launch)
    assert rel_err(out, text_attention_reference(q, k, v, 2, bias)) < 1e-5


def test_a_row_with_every_key_masked_is_zeros_as_sdpa_makes_it():
    q, k, v = _inputs(2, 5, 1, 9, 16, torch.float32)
    keep = torch.ones(2, 1, 1, 9, dtype=torch.bool, device=DEVICE)
    keep[1] = False
    out = text_attention(q, k, v, 1, keep)
    reference = text_attention_reference(q, k, v, 1, keep)
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    if DEVICE == "cpu":  # PyTorch's math backend; the fused CUDA backends have not always agreed on such rows
        assert torch.equal(reference[1], out[1])
    assert rel_err(out[0], reference[0]) < 1e-5


def test_rejects_bad_inputs():
    q, k, v = _inputs(2, 5, 2, 9, 16, torch.float32)
    with pytest.raises(ValueError, match="heads"):
        text_attention(q, k, v, 3)
    with pytest.raises(ValueError, match="share a dtype"):
        text_attention(q, k.half(), v.half(), 2)
    with pytest.raises(ValueError, match="broadcast"):
        text_attention(q, k, v, 2, torch.zeros(2, 1, 1, 8, device=DEVICE))
    with pytest.raises(ValueError, match="no keys"):
        text_attention(q, k[:, :, :0], v[:, :, :0], 2)


@pytest.mark.gpu
@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
@pytest.mark.parametrize("n", [1024, 16384], ids=["1024px", "4096px"])
@pytest.mark.parametrize("heads,d", [(20, 112), (16, 72)], ids=["1600m", "600m"])
def test_gpu_sana_shapes_bf16_every_launch_shape(heads, d, n):
    """SANA's cross-attention (1.6B: 20 heads of 112, 0.6B: 16 of 72) over 300 text tokens, batch 2 (CFG),
    padding masked, at every launch shape the sweep times."""
    from sana.kernels.text_attention.triton import LAUNCH_SHAPES

    q, k, v = _inputs(2, n, heads, 300, d, torch.bfloat16)
    bias, _ = _padding_bias(2, 300, torch.bfloat16, [300, 12])
    reference = text_attention_reference(q.float(), k.float(), v.float(), heads, bias.float())
    for launch in LAUNCH_SHAPES:
        assert rel_err(text_attention(q, k, v, heads, bias, launch=launch), reference) < 1e-2, launch


def test_the_op_runs_the_reference_off_cuda_even_when_the_kernel_is_chosen():
    from sana import ops

    q, k, v = (t.cpu() for t in _inputs(2, 5, 2, 9, 16, torch.float32))
    ops.set_text_attention_kernel(True)
    try:
        assert torch.equal(ops.text_attention(q, k, v, 2), text_attention_reference(q, k, v, 2))
    finally:
        ops.set_text_attention_kernel(False)
