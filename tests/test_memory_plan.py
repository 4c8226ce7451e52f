"""The memory planner on described devices (no hardware needed): tiers, dtypes, tiles, fallbacks, sizes."""

from __future__ import annotations

import math
import struct

import pytest

from sana.device import GiB, DeviceInfo, probe_device
from sana.errors import UsageError
from sana.memory import (
    DTYPE_BYTES, TIERS, Workload, decode_activations, dit_activations, parse_memory_size, plan_memory,
    sizes_from_directory, sizes_from_spec, tile_geometry,
)
from sana.registry import get_spec

GPU_GB = (4, 6, 8, 12, 16, 24, 80)
CAPABILITIES = ((7, 5), (8, 0), (8, 9), (9, 0))
CASES = {"sana-1.6b": 1024, "sana-1.6b-4k": 4096}


def gpu(gb: float, cc=(9, 0), *, ram_gb: float = 64, free_fraction: float = 0.95) -> DeviceInfo:
    """A CUDA card of `gb` GiB with a desktop's worth already in use, in a host with `ram_gb` GiB of RAM."""
    total = int(gb * GiB)
    return DeviceInfo(kind="cuda", name=f"described {gb} GB card", total_memory=total,
                      free_memory=int(total * free_fraction), ram_total=int(ram_gb * GiB),
                      ram_available=int(ram_gb * 0.75 * GiB), compute_capability=cc, kernels=True)


CPU = DeviceInfo(kind="cpu", name="CPU", total_memory=32 * GiB, free_memory=24 * GiB, ram_total=32 * GiB,
                 ram_available=24 * GiB)


@pytest.fixture(scope="module")
def sizes():
    return {name: sizes_from_spec(get_spec(name)) for name in CASES}


def plan_for(sizes, name: str, device: DeviceInfo, **options):
    px = CASES[name]
    return plan_memory(device, sizes[name], Workload(px, px, images=1, rows=2), **options)


# -- every described device ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("cc", CAPABILITIES, ids=lambda cc: f"cc{cc[0]}.{cc[1]}")
@pytest.mark.parametrize("gb", GPU_GB, ids=lambda gb: f"{gb}GB")
def test_every_card_gets_a_plan_that_fits(sizes, name, cc, gb):
    device = gpu(gb, cc)
    plan = plan_for(sizes, name, device)
    assert plan.fits, plan.headline()
    assert plan.peak_bytes <= plan.budget < device.free_memory
    assert plan.dtype == ("bf16" if cc >= (8, 0) else "fp16")
    if plan.decode_tile is not None:
        assert plan.decode_tile >= 512


@pytest.mark.parametrize("name", CASES)
def test_more_memory_never_gives_a_lower_tier_or_smaller_tiles(sizes, name):
    plans = [plan_for(sizes, name, gpu(gb)) for gb in GPU_GB]
    order = [(TIERS.index(p.tier), p.text_encoder_on_cpu) for p in plans]
    assert order == sorted(order, reverse=True)
    tiles = [p.decode_tile or math.inf for p in plans]
    same_tier = [t for t, p in zip(tiles, plans) if p.tier == plans[-1].tier]
    assert same_tier == sorted(same_tier)


def test_80_gb_keeps_everything_resident_and_decodes_4k_whole(sizes):
    for name in CASES:
        plan = plan_for(sizes, name, gpu(80))
        assert plan.tier == "high" and not plan.text_encoder_on_cpu
        assert plan.decode_tile is None
        assert {plan.home(c) for c in ("text_encoder", "transformer", "vae")} == {"device"}
    assert plan_for(sizes, "sana-1.6b", gpu(80)).cuda_graphs  # 1024 px is launch-bound: graphs pay off
    assert not plan_for(sizes, "sana-1.6b-4k", gpu(80)).cuda_graphs  # 4K is not, and the pool would hold GBs


def test_24_gb_at_4k_decodes_in_few_large_tiles(sizes):
    plan = plan_for(sizes, "sana-1.6b-4k", gpu(24))
    assert plan.tier == "high"
    (tile_h, _), (tile_w, _) = tile_geometry(plan.work, 32, plan.decode_tile)
    assert min(tile_h, tile_w) * 32 >= 2048


def test_12_gb_at_4k_frees_the_text_encoder_rather_than_shrinking_tiles(sizes):
    plan = plan_for(sizes, "sana-1.6b-4k", gpu(12))
    assert plan.tier == "balanced"
    assert plan.on_device("encode") == {"text_encoder", "transformer", "vae"}
    assert plan.on_device("denoise") == plan.on_device("decode") == {"transformer", "vae"}
    (tile, _), _ = tile_geometry(plan.work, 32, plan.decode_tile)
    assert tile * 32 >= 1024


def test_8_gb_at_4k_offloads_the_text_encoder_and_tiles_under_the_cap(sizes):
    device = gpu(8)
    plan = plan_for(sizes, "sana-1.6b-4k", device)
    assert plan.home("text_encoder") in ("host", "cpu")  # off the GPU outside encoding
    assert "text_encoder" not in plan.on_device("denoise")
    assert plan.decode_tile is not None and plan.decode_tile < 4096
    assert plan.peak_bytes <= plan.budget < 8 * GiB
    assert plan.pinned == {"text_encoder", "transformer", "vae"}


def test_max_vram_on_a_big_card_plans_like_a_small_one(sizes):
    capped = plan_for(sizes, "sana-1.6b-4k", gpu(80), max_vram=8 * GiB)
    assert capped.cap == 8 * GiB and capped.budget < 8 * GiB
    assert capped.peak_bytes <= capped.budget
    assert capped.tier == plan_for(sizes, "sana-1.6b-4k", gpu(8)).tier
    assert "cap" in capped.record()


def test_4_gb_streams_transformer_blocks_and_encodes_on_the_cpu(sizes):
    plan = plan_for(sizes, "sana-1.6b-4k", gpu(4))
    assert plan.tier == "minimal" and plan.streams_blocks and plan.home("transformer") == "streamed"
    assert plan.text_encoder_on_cpu and plan.te_dtype == "fp32"  # RAM allows fp32: fast CPU matmuls
    assert not plan.cuda_graphs  # weights move during the forward
    assert plan.peak_bytes <= plan.budget
    # Two block slots and the non-block weights, not the whole 1.6B model.
    s = plan.sizes
    assert plan.weights("transformer") == (s.transformer_params - 18 * s.block_params) * 2


def test_4_gb_at_1024_keeps_the_transformer_whole_when_it_fits(sizes):
    plan = plan_for(sizes, "sana-1.6b", gpu(4))
    assert plan.text_encoder_on_cpu  # 5.2 GB of Gemma-2 cannot visit a 4 GB card
    assert plan.tier == "low" and not plan.streams_blocks
    assert plan.peak_bytes <= plan.budget


def test_cpu_text_encoder_falls_back_to_bf16_without_the_ram(sizes):
    plan = plan_for(sizes, "sana-1.6b-4k", gpu(4, ram_gb=16))
    assert plan.text_encoder_on_cpu and plan.te_dtype == "bf16"


@pytest.mark.parametrize("gb", (8, 16, 24, 80), ids=lambda gb: f"{gb}GB")
def test_an_fp16_dit_keeps_gemma2_and_the_autoencoder_in_fp32(sizes, gb):
    """Without bf16 (cc 7.5) the DiT runs fp16, but Gemma-2 and the DC-AE overflow there: they run fp32 (the text
    encoder on the CPU in its own dtype when it does not fit); bf16 cards keep one dtype; --vae-dtype still wins."""
    plan = plan_for(sizes, "sana-1.6b", gpu(gb, (7, 5)))
    assert plan.fits and plan.dtype == "fp16" and plan.vae_dt == "fp32"
    assert plan.te_dtype == "fp32" or plan.text_encoder_on_cpu
    assert dict((row.component.split(" (")[0], row.dtype) for row in plan.rows())["transformer"] == "fp16"
    modern = plan_for(sizes, "sana-1.6b", gpu(gb, (9, 0)))
    assert (modern.dtype, modern.te_dtype, modern.vae_dt) == ("bf16", "bf16", "bf16")
    assert plan_for(sizes, "sana-1.6b", gpu(gb, (7, 5)), vae_dtype="fp16").vae_dt == "fp16"


def test_pinning_is_limited_by_the_ram_blocks_first(sizes):
    plan = plan_for(sizes, "sana-1.6b-4k", gpu(8, ram_gb=12))  # 4.5 GiB of RAM may be pinned
    assert "transformer" in plan.pinned and "text_encoder" not in plan.pinned
    assert any("pin" in note for note in plan.notes())


def test_compute_capability_75_runs_fp16_and_an_explicit_dtype_wins(sizes):
    assert plan_for(sizes, "sana-1.6b", gpu(16, (7, 5))).dtype == "fp16"
    assert plan_for(sizes, "sana-1.6b", gpu(16, (7, 5)), dtype="fp32").dtype == "fp32"
    assert plan_for(sizes, "sana-1.6b", gpu(16, (8, 9))).dtype == "bf16"
    with pytest.raises(UsageError):
        plan_for(sizes, "sana-1.6b", gpu(16), dtype="fp8")


def test_cpu_only_runs_fp32_with_everything_in_ram(sizes):
    plan = plan_for(sizes, "sana-1.6b", CPU)
    assert plan.dtype == "fp32" and not plan.device.is_accelerator
    assert plan.on_device("encode") == plan.on_device("decode") == {"text_encoder", "transformer", "vae"}
    assert not plan.pinned and not plan.cuda_graphs and plan.fits
    assert plan.record()["tier"] == "cpu"
    assert plan.lower("denoise") is None  # nothing to offload to


@pytest.mark.parametrize("mode", TIERS)
def test_a_forced_tier_is_kept(sizes, mode):
    plan = plan_for(sizes, "sana-1.6b", gpu(80), mode=mode)
    assert plan.tier == mode and plan.chosen_by == f"--memory {mode}"


def test_a_forced_tier_that_cannot_fit_says_so(sizes):
    plan = plan_for(sizes, "sana-1.6b-4k", gpu(4), mode="high")
    assert plan.tier == "high" and not plan.fits
    assert "does not fit" in plan.headline()


def test_unknown_mode_is_a_usage_error(sizes):
    with pytest.raises(UsageError, match="unknown memory mode"):
        plan_for(sizes, "sana-1.6b", gpu(8), mode="tiny")


# -- stepping down after out-of-memory errors ---------------------------------------------------------------

def test_denoise_steps_down_tier_by_tier_until_nothing_is_left(sizes):
    plan = plan_for(sizes, "sana-1.6b", gpu(80))
    seen = []
    while plan is not None:
        seen.append(plan.tier)
        plan = plan.lower("denoise")
    assert seen == ["high", "balanced", "low", "minimal"]


def test_decode_shrinks_tiles_before_it_changes_tier(sizes):
    plan = plan_for(sizes, "sana-1.6b-4k", gpu(80))
    tiles = []
    while plan.tier == "high":
        plan = plan.lower("decode")
        tiles.append(plan.decode_tile)
    assert tiles[:-1] == [3072, 2048, 1536, 1024, 768, 512]
    assert plan.tier == "balanced" and plan.decode_tile == 512  # frees the text encoder during the decode
    assert plan.fallbacks[-1] == "decode: --memory balanced"


def test_encode_moves_the_text_encoder_to_the_cpu_and_it_stays_there(sizes):
    plan = plan_for(sizes, "sana-1.6b", gpu(8))
    assert plan.tier == "low" and not plan.text_encoder_on_cpu
    lower = plan.lower("encode")
    assert lower.text_encoder_on_cpu and lower.tier == "low"
    assert lower.lower("denoise").text_encoder_on_cpu  # sticky: never back onto the GPU
    assert lower.lower("encode") is None


def test_a_caller_placed_pipeline_only_shrinks_tiles(sizes):
    from sana.memory import resident_plan

    plan = resident_plan(gpu(80), sizes["sana-1.6b"], Workload(1024, 1024), "bf16", cuda_graphs=True)
    assert plan.lower("denoise") is None
    assert plan.lower("decode").decode_tile == 768


# -- estimates ------------------------------------------------------------------------------------------

def test_dit_activations_are_linear_in_tokens_and_rows(sizes):
    s = sizes["sana-1.6b-4k"]
    small = dit_activations(s, Workload(1024, 1024, rows=2), 2, kernels=True)
    assert dit_activations(s, Workload(4096, 4096, rows=2), 2, kernels=True) == 16 * small
    assert dit_activations(s, Workload(4096, 4096, rows=1), 2, kernels=True) == 8 * small
    assert dit_activations(s, Workload(1024, 1024, rows=2), 2, kernels=False) == 2 * small


def test_untiled_4k_decode_is_about_20_gb_in_bf16_with_kernels_and_tiles_scale_with_area(sizes):
    s = sizes["sana-1.6b-4k"]
    work = Workload(4096, 4096)
    whole = decode_activations(s, work, DTYPE_BYTES["bf16"], None, kernels=True)
    assert 18 * GiB < whole < 22 * GiB  # 18.3 GiB measured above the weights (H200, bf16)
    # The PyTorch references (fp32 norm statistics, as diffusers' decoder) need about 27 GB.
    assert 25 * GiB < decode_activations(s, work, DTYPE_BYTES["bf16"], None, kernels=False) < 29 * GiB
    output = 4096 * 4096 * 24
    half = decode_activations(s, work, 2, 2048 + 128, kernels=True) - output  # 2 x 2 tiles of 2176 px
    quarter = decode_activations(s, work, 2, 1024 + 128, kernels=True) - output
    assert half / quarter == pytest.approx((2176 / 1152) ** 2, rel=0.02)


@pytest.mark.parametrize("side", [32, 40, 64, 100, 128, 131])
@pytest.mark.parametrize("max_tile", [16, 24, 47, 64])
def test_tiles_cover_the_image_without_slivers(side, max_tile):
    geometry = tile_geometry(Workload(64 * 32, side * 32), 32, max_tile * 32)  # height: side latents
    tile, stride = geometry[0] if geometry else (side, side)
    assert tile <= max(max_tile, 1) or tile == side
    starts = list(range(0, side, stride))  # diffusers' loop
    assert starts[-1] + tile >= side  # covered
    assert len(starts) == 1 or tile - stride >= 1  # neighbours overlap for blending
    if len(starts) > 1:
        assert side - starts[-1] > tile - stride  # the last tile adds more than the overlap: no sliver


# -- options and sizes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [("8G", 8 * GiB), ("8gb", 8 * GiB), ("7.5GiB", int(7.5 * GiB)),
                                           ("6000M", 6000 << 20), ("12", 12 * GiB)])
def test_memory_sizes_parse_in_binary_units(text, expected):
    assert parse_memory_size(text) == expected


@pytest.mark.parametrize("text", ["eight", "8X", "-1G", "100M"])
def test_bad_memory_sizes_are_usage_errors(text):
    with pytest.raises(UsageError):
        parse_memory_size(text)


def test_sizes_come_from_headers_and_configs_without_reading_tensors(tmp_path):
    from tests.tiny_pipeline import build_pipeline

    pipe = build_pipeline(tmp_path, "4k")
    # Cut the tensor data off every text-encoder file: only the JSON header is left to read.
    for weights in (tmp_path / "text_encoder").glob("*.safetensors"):
        data = weights.read_bytes()
        (header_len,) = struct.unpack("<Q", data[:8])
        weights.write_bytes(data[: 8 + header_len])
    sizes = sizes_from_directory(tmp_path)
    assert sizes.text_encoder_params == sum(p.numel() for p in pipe.text_encoder.parameters())
    assert sizes.transformer_params == sum(p.numel() for p in pipe.transformer.parameters())
    from sana.loading import load_vae_decoder

    # Our decoder's: its interpolating up blocks hold 2x2 phase kernels, more than diffusers' 3x3.
    assert sizes.vae_decoder_params == sum(p.numel() for p in load_vae_decoder(tmp_path / "vae").parameters())
    assert sizes.blocks == pipe.transformer.config.num_layers
    assert sizes.block_params * sizes.blocks < sizes.transformer_params
    assert sizes.vae_scale_factor == 4 and sizes.native_resolution == pipe.transformer.config.sample_size * 4
    assert sizes.source == "weights"


def test_registry_sizes_match_the_released_components(sizes):
    s = sizes["sana-1.6b-4k"]
    assert s.transformer_params == get_spec("sana-1.6b-4k").params["transformer"]
    assert s.blocks == 20 and s.inner_dim == 2240
    assert s.text_hidden == 2304 and s.vae_scale_factor == 32 and s.vae_decoder_width == 128
    assert s.native_resolution == 4096 and s.source == "registry"


def test_the_cpu_probe_describes_this_machine():
    info = probe_device("cpu")
    assert info.kind == "cpu" and not info.is_accelerator
    assert 0 < info.ram_available <= info.ram_total and info.compute_capability is None


def test_the_plan_table_names_every_component(sizes):
    from rich.console import Console

    from sana_cli.generation import plan_table

    console = Console(width=200, record=True)
    console.print(plan_table(plan_for(sizes, "sana-1.6b-4k", gpu(4)), "sana-1.6b-4k"))
    text = console.export_text()
    for expected in ("text encoder", "transformer", "VAE decoder", "streamed to the GPU block by block",
                     "CPU (encodes there", "tiles of", "predicted peak", "minimal"):
        assert expected in text, expected


def test_fp8_blocks_count_a_byte_a_weight(sizes):
    """`--fp8`: the blocks' six image-token linears hold 1-byte weights (plus fp32 scales); the text's key/value
    projection and everything outside the blocks stay bf16: 57% of the bf16 bytes for SANA 1.6B."""
    from sana.memory import with_fp8_blocks

    config = {k: v for k, v in get_spec("sana-1.6b").transformer.items() if not k.startswith("_")}
    bf16, fp8 = sizes["sana-1.6b"], with_fp8_blocks(sizes["sana-1.6b"], config)
    assert 0.55 < fp8.transformer_params / bf16.transformer_params < 0.6
    assert 0.55 < fp8.block_params / bf16.block_params < 0.58
    assert (fp8.text_encoder_params, fp8.inner_dim, fp8.blocks) == (bf16.text_encoder_params, bf16.inner_dim, bf16.blocks)
    device = gpu(6, cc=(8, 9))
    plan_bf16 = plan_memory(device, bf16, Workload(1024, 1024, images=1, rows=2))
    plan_fp8 = plan_memory(device, fp8, Workload(1024, 1024, images=1, rows=2))
    assert TIERS.index(plan_fp8.tier) <= TIERS.index(plan_bf16.tier)
    assert plan_fp8.peak("denoise") < plan_bf16.peak("denoise")


def test_phases_fit_at_once_only_with_room_for_both_activations(sizes):
    """The first steps may run beside the decoder's warm-up only when both phases' activations fit together."""
    import dataclasses

    plan = plan_for(sizes, "sana-1.6b", gpu(80))
    assert plan.fits_at_once("denoise", "decode")
    held = plan.on_device("denoise") | plan.on_device("decode")
    both = sum(plan.weights(c) for c in held) + plan.activations("denoise") + plan.activations("decode")
    assert dataclasses.replace(plan, budget=both).fits_at_once("denoise", "decode")
    assert not dataclasses.replace(plan, budget=both - 1).fits_at_once("denoise", "decode")
    # without CUDA graphs (whose pool the decode's peak counts already), a plan that fits one phase at a time
    assert dataclasses.replace(plan, budget=both - 1, cuda_graphs=False).fits
    low = plan_for(sizes, "sana-1.6b-4k", gpu(8))
    assert low.fits and not low.fits_at_once("denoise", "decode")


def test_the_text_encoder_replays_graphs_only_where_it_stays_resident_with_room_for_them(sizes):
    import dataclasses

    plan = plan_for(sizes, "sana-1.6b", gpu(80))
    assert plan.tier == "high" and plan.text_encoder_graphs
    assert not dataclasses.replace(plan, cuda_graphs=False).text_encoder_graphs
    assert not dataclasses.replace(plan, tier="balanced").text_encoder_graphs  # moved off for the denoise
    assert not dataclasses.replace(plan, text_encoder_on_cpu=True).text_encoder_graphs
    room = plan.peak_bytes + plan.activations("encode")
    assert dataclasses.replace(plan, budget=room).text_encoder_graphs
    assert not dataclasses.replace(plan, budget=room - 1).text_encoder_graphs
    assert not plan_for(sizes, "sana-1.6b", CPU).text_encoder_graphs
