"""On a GPU: our SANA-WM DiT against diffusers' at the released 2.6B config (its class defaults), random weights,
bf16, at 704x1280 (22x40 latents) with 5 latent frames (33 video frames) and batch 2 (as with guidance)."""

from __future__ import annotations

import time

import pytest
import torch

from tiny_world import camera_inputs

pytestmark = pytest.mark.gpu

FRAMES, HEIGHT, WIDTH = 5, 22, 40


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
def released():
    """(ours, the inputs, diffusers' output and time) at the released config with random weights."""
    from diffusers import SanaWMTransformer3DModel

    from sana.loading import world_transformer_from_state

    torch.manual_seed(0)
    with torch.device("cuda"):
        ref = SanaWMTransformer3DModel().to(torch.bfloat16).eval()
    with torch.no_grad():  # the Plücker embedder and the short convs start at zero: give them values
        for p in ref.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    ours = world_transformer_from_state(dict(ref.config), ref.state_dict(), dtype=torch.bfloat16, device="cuda")
    assert ours.load_report.unexpected == []

    gen = torch.Generator("cuda").manual_seed(1)
    x = torch.randn(2, 128, FRAMES, HEIGHT, WIDTH, device="cuda", generator=gen).bfloat16()
    timestep = torch.full((2, 1, FRAMES), 857.69, device="cuda")
    timestep[:, :, 0] = 0.0
    text = torch.randn(2, 1, 300, 2304, device="cuda", generator=gen).bfloat16()
    mask = torch.ones(2, 300, device="cuda", dtype=torch.long)
    mask[0, 40:] = 0
    camera, plucker = (t.to("cuda", torch.bfloat16) for t in camera_inputs(2, FRAMES, HEIGHT, WIDTH))
    args = (x, timestep, text, mask, camera, plucker)
    expected, seconds = _timed(lambda: ref(x, timestep, text, mask=mask, camera_conditions=camera,
                                           chunk_plucker=plucker, return_dict=False)[0])
    return ours, args, expected, seconds


@pytest.mark.parametrize("kernels", [True, False], ids=["triton-kernels", "references"])
def test_released_config_bf16_matches_diffusers(released, kernels):
    from sana import ops

    ours, args, expected, ref_seconds = released
    ops.set_kernels_enabled(kernels)
    try:
        got, seconds = _timed(lambda: ours(*args))
    finally:
        ops.set_kernels_enabled(True)
    err = _relative_error(got, expected)
    print(f"SANA-WM 2.6B, {FRAMES}x{HEIGHT}x{WIDTH} latents, batch 2, bf16, kernels {kernels}: relative error "
          f"{err:.2e} (first calls: ours {seconds:.2f} s, diffusers {ref_seconds:.2f} s)")
    assert torch.isfinite(got).all()
    assert err < 2e-2


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="fp8 GEMMs need compute capability 8.9+")
def test_released_config_fp8_within_budget_of_diffusers(released):
    """`sana world --fp8`: the blocks' listed linears as fp8 GEMMs against diffusers' bf16 model (the image DiT's
    budget, tests/test_gpu_parity.py)."""
    import copy

    from sana.models.fp8 import quantize_blocks_fp8
    from sana.models.world_transformer import WorldBlock

    ours, args, expected, _ = released
    quantized = copy.deepcopy(ours)
    assert quantize_blocks_fp8(quantized) >= (len(WorldBlock.FP8_LINEARS) - 1) * len(ours.blocks)
    got, seconds = _timed(lambda: quantized(*args))
    err = _relative_error(got, expected)
    print(f"SANA-WM 2.6B fp8: relative error {err:.2e} against diffusers bf16 (first call {seconds:.2f} s)")
    assert torch.isfinite(got).all() and err < 0.1
