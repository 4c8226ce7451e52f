"""On a GPU: our SANA-Video DiT against diffusers' at the real 2B 480p config, random weights, bf16, batch 2,
480x832 at 81 frames (a 21 x 30 x 52 token grid), 300 text tokens with padding, Triton kernels on and off."""

from __future__ import annotations

import time

import pytest
import torch

from sana import ops
from sana.registry import get_spec

pytestmark = pytest.mark.gpu

FRAMES, HEIGHT, WIDTH = 21, 60, 104  # latent grid of 81 frames at 480x832 (Wan VAE: 4x temporal, 8x spatial)


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.float() - ref.float()).norm() / ref.float().norm()).item()


def _timed(fn):
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """diffusers' model at the preset's config with random weights (none left at zero) and ours loaded from its
    saved folder, both bf16 on the GPU."""
    from diffusers import SanaVideoTransformer3DModel

    from sana.loading import load_transformer

    folder = tmp_path_factory.mktemp("video-2b")
    config = {k: v for k, v in get_spec("video-2b-480p").transformer.items() if not k.startswith("_")}
    torch.manual_seed(0)
    with torch.device("cuda"):
        ref = SanaVideoTransformer3DModel(**config)
    ref = ref.to(torch.bfloat16).eval()
    with torch.no_grad():  # diffusers zero-inits some layers: give every weight a value
        for p in ref.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    ref.save_pretrained(folder / "transformer")
    ours = load_transformer(folder, dtype=torch.bfloat16, device="cuda")
    return ref, ours


@pytest.fixture(scope="module")
def cases(pair):
    """timestep kind -> (inputs, diffusers' output); inputs for batch 2 (CFG rows), padding in text row 0."""
    ref, _ = pair
    gen = torch.Generator("cuda").manual_seed(1)
    x = torch.randn(2, 16, FRAMES, HEIGHT, WIDTH, device="cuda", generator=gen).bfloat16()
    text = torch.randn(2, 300, 2304, device="cuda", generator=gen).bfloat16()
    mask = torch.ones(2, 300, device="cuda", dtype=torch.long)
    mask[0, 40:] = 0
    t = torch.tensor([999.0, 500.0], device="cuda")
    first_frame = t[:, None, None, None, None].expand(2, 1, FRAMES, HEIGHT // 2, WIDTH // 2).clone()
    first_frame[:, :, 0] = 0.0  # image-to-video: the given first frame is clean
    out = {}
    for name, timestep in (("text-to-video", t), ("image-to-video", first_frame)):
        expected, seconds = _timed(lambda: ref(x, encoder_hidden_states=text, timestep=timestep,
                                               encoder_attention_mask=mask, return_dict=False)[0])
        print(f"diffusers {name}: {seconds:.2f} s")
        out[name] = (x, text, mask, timestep), expected
    return out


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "reference-ops"])
@pytest.mark.parametrize("kind", ["text-to-video", "image-to-video"])
def test_2b_480p_bf16_matches_diffusers(pair, cases, kind, kernels):
    _, ours = pair
    (x, text, mask, timestep), expected = cases[kind]
    ops.set_kernels_enabled(kernels)
    try:
        with torch.no_grad():
            ours(x, text, timestep, text_mask=mask)  # warm-up (Triton compiles, RoPE tables)
        got, seconds = _timed(lambda: ours(x, text, timestep, text_mask=mask))
    finally:
        ops.set_kernels_enabled(True)
    err = _relative_error(got, expected)
    print(f"ours {kind} kernels={kernels}: {seconds:.2f} s, relative error {err:.2e}")
    assert got.shape == expected.shape
    assert torch.isfinite(got).all()
    assert err < 1e-2


def test_the_temporal_conv_as_one_implicit_gemm_matches_diffusers(pair, cases):
    """The Triton implicit GEMM for the temporal conv (y + conv(y) in one pass) in place of cuDNN's: the same bound,
    and both timings printed."""
    _, ours = pair
    (x, text, mask, timestep), expected = cases["text-to-video"]
    results = {}
    for gemm in (False, True):
        ops.set_temporal_conv_gemm(gemm)
        try:
            with torch.no_grad():
                ours(x, text, timestep, text_mask=mask)  # warm-up
            results[gemm] = _timed(lambda: ours(x, text, timestep, text_mask=mask))
        finally:
            ops.set_temporal_conv_gemm(False)
    for gemm, (got, seconds) in results.items():
        err = _relative_error(got, expected)
        print(f"ours, temporal conv {'Triton GEMM' if gemm else 'cuDNN'}: {seconds:.3f} s, relative error {err:.2e}")
        assert err < 1e-2
