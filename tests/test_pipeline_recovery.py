"""Memory plans carried out by the pipeline, and out-of-memory recovery: smaller tiles, lower tiers, one notice
each; one-line errors when nothing lower exists. Plans for described GPUs run on the CPU here (host and
"device" are both CPU memory), which exercises every placement except page-locking and side streams."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sana.device import GiB, DeviceInfo
from sana.errors import SanaError
from sana.memory import TIERS, Workload, plan_memory, sizes_from_directory
from sana.pipelines.common import Events
from sana.pipelines.image import ImagePipeline, ImageRequest
from tests.cli_helpers import psnr
from tests.tiny_pipeline import build_pipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    build_pipeline(path, "sana")
    return ImagePipeline.from_pretrained(path, dtype=torch.float32, device="cpu")


REQUEST = ImageRequest(prompt="a red circle", seeds=[1], width=64, height=64, steps=3, guidance=4.5,
                       sampler="flow-dpm", flow_shift=3.0)


def test_decode_out_of_memory_retries_in_tiles(pipe, monkeypatch):
    expected = pipe.generate(REQUEST).images[0]
    real_decode = pipe.vae.decode
    calls = []

    def decode(latents, tile=None):
        calls.append(tile is not None)
        if tile is None:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_decode(latents, tile=tile)

    monkeypatch.setattr(pipe.vae, "decode", decode)
    notices = []
    image = pipe.generate(REQUEST, Events(on_notice=notices.append)).images[0]
    assert calls == [False, True]
    assert len(notices) == 1 and "tiles" in notices[0]
    assert psnr(image, expected) >= 45  # tiles larger than the image: the same pixels


def test_decode_out_of_memory_even_in_tiles_is_one_error(pipe, monkeypatch):
    def decode(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(pipe.vae, "decode", decode)
    with pytest.raises(SanaError, match="even in tiles"):
        pipe.generate(REQUEST)


def test_denoise_out_of_memory_is_one_error(pipe, monkeypatch):
    def forward(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(pipe, "denoiser", forward)
    with pytest.raises(SanaError, match="out of GPU memory while denoising at 64x64"):
        pipe.generate(REQUEST)


# -- memory plans carried out on the CPU ----------------------------------------------------------------------

BIG_GPU = DeviceInfo(kind="cuda", name="described 80 GB card", total_memory=80 * GiB, free_memory=78 * GiB,
                     ram_total=64 * GiB, ram_available=48 * GiB, compute_capability=(9, 0))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, pipe):
    path = tmp_path_factory.mktemp("tiny-plans")
    build_pipeline(path, "sana")
    expected = np.asarray(pipe.generate(REQUEST).images[0])
    return path, sizes_from_directory(path), expected


def described_plan(sizes, mode: str):
    return plan_memory(BIG_GPU, sizes, Workload(64, 64), mode=mode, dtype="fp32")


@pytest.mark.parametrize("mode", TIERS)
def test_every_tier_gives_the_resident_image(tiny, mode):
    path, sizes, expected = tiny
    plan = described_plan(sizes, mode)
    planned = ImagePipeline.from_pretrained(path, dtype=torch.float32, device="cpu", plan=plan)
    for _ in range(2):  # the second run starts from the first one's placement
        result = planned.generate(REQUEST)
        assert np.array_equal(np.asarray(result.images[0]), expected)
    assert result.memory["tier"] == mode
    assert planned.placement.denoiser is planned.transformer  # no CUDA graphs off CUDA


def test_text_encoder_on_the_cpu_gives_the_resident_image(tiny):
    path, sizes, expected = tiny
    plan = described_plan(sizes, "low").lower("encode")
    assert plan.text_encoder_on_cpu and plan.te_dtype == "fp32"
    planned = ImagePipeline.from_pretrained(path, dtype=torch.float32, device="cpu", plan=plan)
    assert np.array_equal(np.asarray(planned.generate(REQUEST).images[0]), expected)


def test_streamed_blocks_run_from_two_slots_and_match_the_resident_forward(tiny):
    from sana.loading import load_transformer
    from sana.placement import StreamedBlocks

    path, _, _ = tiny
    model = load_transformer(path, dtype=torch.float32)
    x, text = torch.randn(2, 8, 8, 8), torch.randn(2, 12, 40)
    t = torch.tensor([500.0, 20.0])
    with torch.no_grad():
        expected = model(x, text, t)
        streamed = StreamedBlocks(model, torch.device("cpu"), pin=False)
        homes = [flat.host.data_ptr() for flat in streamed.flats]
        seen = []
        probes = [block.register_forward_hook(lambda m, a, o: seen.append(m.attn.qkv.weight.data_ptr()))
                  for block in model.blocks]
        streamed.to_device()
        slots = {slot.data_ptr() for slot in streamed._slots}
        out = model(x, text, t)
        out_again = model(x, text, t)
        streamed.to_host()
    for probe in probes:
        probe.remove()
    assert torch.equal(out, expected) and torch.equal(out_again, expected)
    # Each block ran from a slot (alternating), never from its host copy.
    assert len(seen) == 2 * len(model.blocks)
    assert all(any(ptr - base < streamed.flats[0].nbytes and ptr >= base for base in slots) for ptr in seen)
    assert len({ptr for ptr in seen}) == 2
    # Back on the host afterwards, with no hooks left.
    assert model.blocks[0].attn.qkv.weight.data_ptr() - homes[0] < streamed.flats[0].nbytes
    assert not model.blocks[0]._forward_pre_hooks and not model.blocks[0]._forward_hooks


def test_flat_weights_keep_tied_parameters_and_buffers(tiny, monkeypatch):
    from torch import nn

    from sana import placement
    from sana.placement import FlatWeights

    monkeypatch.setattr(placement, "CHUNK_BYTES", 64)  # a device copy in several pieces

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(3, 4)
            self.b.weight = self.a.weight  # shared
            self.register_buffer("scale", torch.tensor([2.0], dtype=torch.float64))

    module = Tied()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    flat = FlatWeights(module)
    assert module.a.weight is module.b.weight
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert module.scale.dtype == torch.float64
    pieces = flat.upload(torch.device("cpu"))
    assert len(pieces) == len(flat.entries) == 4  # shared weight, two biases, buffer: a piece each at 64 B
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert module.scale.data_ptr() == pieces[-1].data_ptr() and module.b.weight is module.a.weight
    flat.bind(flat.host)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


def out_of_memory_once(real_forward):
    """`real_forward`, except that its first call raises a CUDA out-of-memory error."""
    calls = []

    def forward(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_forward(*args, **kwargs)

    return forward


def test_out_of_memory_while_denoising_steps_down_one_tier_with_one_notice(tiny, monkeypatch):
    path, sizes, expected = tiny
    planned = ImagePipeline.from_pretrained(path, dtype=torch.float32, device="cpu", plan=described_plan(sizes, "high"))
    monkeypatch.setattr(planned.transformer, "forward", out_of_memory_once(planned.transformer.forward))
    notices = []
    result = planned.generate(REQUEST, Events(on_notice=notices.append))
    assert np.array_equal(np.asarray(result.images[0]), expected)
    assert len(notices) == 1 and "denoising" in notices[0] and "--memory balanced" in notices[0]
    assert planned.plan.tier == "balanced" and result.memory["fallbacks"] == "denoise: --memory balanced"


def test_out_of_memory_while_encoding_moves_the_text_encoder_to_the_cpu(tiny, monkeypatch):
    path, sizes, expected = tiny
    planned = ImagePipeline.from_pretrained(path, dtype=torch.float32, device="cpu", plan=described_plan(sizes, "low"))
    model = planned.text_encoder.model
    monkeypatch.setattr(model, "forward", out_of_memory_once(model.forward))
    notices = []
    result = planned.generate(REQUEST, Events(on_notice=notices.append))
    assert np.array_equal(np.asarray(result.images[0]), expected)
    assert len(notices) == 1 and "text encoder on the CPU" in notices[0]
    assert planned.plan.text_encoder_on_cpu


def test_out_of_memory_with_nothing_lower_is_one_error(tiny, monkeypatch):
    path, sizes, _ = tiny
    plan = described_plan(sizes, "minimal")
    planned = ImagePipeline.from_pretrained(path, dtype=torch.float32, device="cpu", plan=plan)

    def forward(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(planned.transformer, "forward", forward)
    notices = []
    with pytest.raises(SanaError, match="out of GPU memory while denoising"):
        planned.generate(REQUEST, Events(on_notice=notices.append))
    assert notices == []  # minimal is the floor for the transformer


def test_tiles_follow_the_plan(pipe):
    from dataclasses import replace

    from sana.placement import decode_tiling

    plan = replace(pipe.plan, decode_tile=32, work=Workload(64, 64))
    scale = pipe.vae_scale_factor
    tile = decode_tiling(plan, 64, 64)
    assert tile.height * scale <= 32 and tile.width * scale <= 32
    assert tile.stride_height < tile.height and tile.splits(64 // scale, 64 // scale)
    whole = decode_tiling(replace(plan, decode_tile=128), 64, 64)  # one tile: the whole image
    assert (whole.height, whole.width) == (64 // scale,) * 2 and not whole.splits(64 // scale, 64 // scale)
    assert decode_tiling(replace(plan, decode_tile=None), 64, 64) is None


@pytest.mark.gpu
def test_streaming_and_offload_on_cuda_match_the_resident_image(tmp_path):
    """On a GPU: page-locked host copies and side-stream prefetch give the resident image."""
    from sana.device import probe_device

    build_pipeline(tmp_path, "sana")
    sizes = sizes_from_directory(tmp_path)
    images = {}
    for mode in TIERS:
        plan = plan_memory(probe_device("cuda"), sizes, Workload(64, 64), mode=mode, dtype="fp32")
        planned = ImagePipeline.from_pretrained(tmp_path, dtype=torch.float32, device="cuda", plan=plan)
        planned.generate(REQUEST)  # the second run starts from the first one's placement
        images[mode] = np.asarray(planned.generate(REQUEST).images[0])
        if mode in ("low", "minimal"):
            assert all(name in plan.pinned for name in ("transformer", "vae"))
            assert planned.placement._homes["vae"].flat.pinned
        del planned
        torch.cuda.empty_cache()
    for mode in TIERS:
        assert psnr(images[mode], images["high"]) >= 40, mode
