"""SANA-WM's bidirectional gated delta rule kernel against its reference."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from kernel_helpers import DEVICE, DTYPES, TOLERANCE, rel_err  # noqa: E402

from sana.kernels import gdn_bidirectional  # noqa: E402
from sana.kernels.gdn.reference import gdn_bidirectional_reference  # noqa: E402

# (batch, frames, tokens a frame, heads, head dim, fused). The frame products and the read take 32 tokens a
# step, the scan 16 value rows a program (plus one program for the normaliser's row): S = 37 is a whole block
# and a tail, D = 24 is padded to 32 key lanes and its second row block is half empty.
SHAPES = [
    pytest.param(2, 3, 37, 1, 16, True, id="b2-t3-s37-h1-d16-fused"),
    pytest.param(1, 4, 9, 2, 24, False, id="b1-t4-s9-h2-d24-separate"),
    pytest.param(1, 1, 20, 2, 16, True, id="b1-t1-one-frame"),
]


def _inputs(b, t, s, h, d, fused, dtype, device=DEVICE, seed=0):
    """Inputs shaped as SANA-WM feeds them: plain q, k >= 0 (ReLU'd), keys scaled by (D S)^-1/2, rotated
    copies for the numerator, beta in (0, 1), decay in (0.5, 1). fused: q, k, v are the [B, N, H, D] views of
    one [B, N, 3, H, D] projection (token stride 3 H D), as the model's qkv unbind gives them."""
    gen = torch.Generator(device).manual_seed(seed)
    n = t * s
    if fused:
        q, k, v = torch.randn(b, n, 3, h, d, generator=gen, device=device).to(dtype).unbind(2)
    else:
        q, k, v = (torch.randn(b, n, h, d, generator=gen, device=device).to(dtype) for _ in range(3))
    q_plain = torch.rand(b, n, h, d, generator=gen, device=device).to(dtype)
    k_plain = (torch.rand(b, n, h, d, generator=gen, device=device) * (d * s) ** -0.5).to(dtype)
    k.mul_((d * s) ** -0.5)  # in place: a fused view keeps its strides
    beta = torch.rand(b, n, h, generator=gen, device=device).to(dtype)
    decay = 0.5 + 0.5 * torch.rand(b, t, h, generator=gen, device=device)
    return q, k, v, beta, decay, q_plain, k_plain


def _check(out, ref, dtype):
    assert out.shape == ref.shape and out.dtype == ref.dtype and out.is_contiguous()
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("normalised", [True, False], ids=["normalised", "numerator-only"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b, t, s, h, d, fused", SHAPES)
def test_matches_reference(b, t, s, h, d, fused, dtype, normalised):
    q, k, v, beta, decay, q_plain, k_plain = _inputs(b, t, s, h, d, fused, dtype)
    plain = (q_plain, k_plain) if normalised else (None, None)
    out = gdn_bidirectional(q, k, v, beta, decay, *plain)
    _check(out, gdn_bidirectional_reference(q, k, v, beta, decay, *plain), dtype)


@pytest.mark.parametrize("chunk_frames", [1, 2, 3], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("normalised", [True, False], ids=["normalised", "numerator-only"])
def test_chunked_clip(chunk_frames, normalised):
    """A clip longer than one chunk (7 frames in chunks of 1, 2 and 3, the last one short): the states carried
    between chunks both ways give the one-chunk result."""
    q, k, v, beta, decay, q_plain, k_plain = _inputs(2, 7, 9, 2, 16, True, torch.float32)
    plain = (q_plain, k_plain) if normalised else (None, None)
    out = gdn_bidirectional(q, k, v, beta, decay, *plain, chunk_frames=chunk_frames)
    _check(out, gdn_bidirectional_reference(q, k, v, beta, decay, *plain), torch.float32)
    whole = gdn_bidirectional(q, k, v, beta, decay, *plain, chunk_frames=7)
    assert rel_err(out, whole) < 1e-5


def test_chunk_size_from_budget():
    from sana.kernels.gdn.triton import _chunk_frames

    assert _chunk_frames(21, 100, 10_000) == 21  # fits: one chunk
    assert _chunk_frames(121, 100, 2_200) == 21  # 22 fit; six chunks of 21 (the last 16), not 22 x 5 + 11
    assert _chunk_frames(5, 100, 50) == 1  # never less than a frame


def test_head_dim_112():
    """SANA-WM's head dim: 112 key lanes padded to 128, seven row blocks of 16 and z's row in an eighth."""
    q, k, v, beta, decay, q_plain, k_plain = _inputs(1, 2, 12, 1, 112, True, torch.float32)
    out = gdn_bidirectional(q, k, v, beta, decay, q_plain, k_plain)
    _check(out, gdn_bidirectional_reference(q, k, v, beta, decay, q_plain, k_plain), torch.float32)


def test_any_strides():
    """Channel-strided q (a transposed view), a beta slice of a wider projection, decay as a [B, H, T]
    transpose, normaliser streams of another dtype: all read in place."""
    q, k, v, beta, decay, q_plain, k_plain = _inputs(2, 3, 7, 2, 16, False, torch.float32)
    q = q.transpose(2, 3).contiguous().transpose(2, 3)  # [B, N, H, D], channel stride H
    beta = torch.cat([beta, torch.rand_like(beta)], dim=-1)[..., :2]  # [B, N, H] view, token stride 2 H
    decay = decay.transpose(1, 2).contiguous().transpose(1, 2)  # [B, T, H], frame stride 1
    q_plain, k_plain = q_plain.half(), k_plain.half()
    assert q.stride(-1) != 1 and not beta.is_contiguous() and not decay.is_contiguous()
    out = gdn_bidirectional(q, k, v, beta, decay, q_plain, k_plain, eps=1e-6)
    ref = gdn_bidirectional_reference(q, k, v, beta, decay, q_plain, k_plain, eps=1e-6)
    _check(out, ref, torch.float32)


def test_output_in_v_dtype():
    """Half q and k with fp32 v: the output is fp32, as the reference returns it."""
    q, k, v, beta, decay, q_plain, k_plain = _inputs(1, 2, 6, 1, 16, False, torch.float32)
    out = gdn_bidirectional(q.half(), k.half(), v, beta, decay)
    _check(out, gdn_bidirectional_reference(q.half(), k.half(), v, beta, decay), torch.float32)


def test_rejects_bad_inputs(monkeypatch):
    q, k, v, beta, decay, q_plain, k_plain = _inputs(1, 2, 4, 2, 16, False, torch.float32)
    with pytest.raises(ValueError, match="both q_plain and k_plain"):
        gdn_bidirectional(q, k, v, beta, decay, q_plain)
    with pytest.raises(ValueError, match="k must be"):
        gdn_bidirectional(q, k[:, :4], v, beta, decay)
    with pytest.raises(ValueError, match="do not split into 3 frames"):
        gdn_bidirectional(q, k, v, beta, torch.rand(1, 3, 2))
    with pytest.raises(ValueError, match="beta must be"):
        gdn_bidirectional(q, k, v, beta[..., :1], decay)
    with pytest.raises(ValueError, match="head dim 144"):
        gdn_bidirectional(*(torch.rand(1, 8, 2, 144) for _ in range(3)), beta, decay)
    with pytest.raises(ValueError, match="precision"):
        gdn_bidirectional(q, k, v, beta, decay, precision="bf16")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="CUDA tensors"):
            gdn_bidirectional(q, k, v, beta, decay)


# -- GPU, SANA-WM shapes ------------------------------------------------------------------------------------

GPU_SHAPES = [  # (batch, frames, tokens a frame, heads, head dim)
    pytest.param(2, 5, 880, 20, 112, id="wm-704x1280-5-frames"),
    pytest.param(1, 9, 100, 4, 112, id="t9-s100-tail"),
    pytest.param(2, 3, 64, 3, 32, id="d32"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("normalised", [True, False], ids=["normalised", "numerator-only"])
@pytest.mark.parametrize("b, t, s, h, d", GPU_SHAPES)
@pytest.mark.parametrize("chunk_frames", [None, 2], ids=["one-chunk", "chunks-of-2"])
def test_gpu_bf16(b, t, s, h, d, normalised, chunk_frames):
    q, k, v, beta, decay, q_plain, k_plain = _inputs(b, t, s, h, d, True, torch.bfloat16, "cuda")
    plain = (q_plain, k_plain) if normalised else (None, None)
    out = gdn_bidirectional(q, k, v, beta, decay, *plain, chunk_frames=chunk_frames)
    # The exact answer for these bf16 inputs, unrounded; the kernel rounds it once to bf16.
    exact = gdn_bidirectional_reference(q, k, v.float(), beta, decay, *plain)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_err(out, exact) < 5e-3
    assert rel_err(out, exact) <= 1.01 * rel_err(exact.bfloat16(), exact)  # no further off than rounding


@pytest.mark.gpu
@pytest.mark.parametrize("precision, bound", [("tf32x3", 1e-5), ("ieee", 1e-5), ("tf32", 2e-3)])
def test_gpu_precisions(precision, bound):
    """Each dot precision against the fp32 result (fp32 inputs and output)."""
    q, k, v, beta, decay, q_plain, k_plain = _inputs(2, 6, 880, 4, 112, True, torch.float32, "cuda")
    out = gdn_bidirectional(q, k, v, beta, decay, q_plain, k_plain, precision=precision)
    assert rel_err(out, gdn_bidirectional_reference(q, k, v, beta, decay, q_plain, k_plain)) < bound


@pytest.mark.gpu
def test_gpu_dispatch():
    """ops.gdn_bidirectional runs the kernel on CUDA tensors (inference) and the reference under autograd."""
    from sana import ops

    q, k, v, beta, decay, q_plain, k_plain = _inputs(1, 3, 50, 2, 112, True, torch.float32, "cuda")
    with torch.no_grad():
        assert torch.equal(ops.gdn_bidirectional(q, k, v, beta, decay, q_plain, k_plain),
                           gdn_bidirectional(q, k, v, beta, decay, q_plain, k_plain))
    v.requires_grad_(True)
    out = ops.gdn_bidirectional(q, k, v, beta, decay, q_plain, k_plain)
    assert out.requires_grad
