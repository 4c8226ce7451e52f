"""The memory planner for clips on described devices (no hardware needed): SANA-Video with Wan 2.1 and LTX-2,
SANA-WM up to a minute; sizes from presets, folders and modules; tiles in space and time; fallbacks; the
placement's video pieces (streaming blocks that differ, offloading a diffusers VAE, diffusers' tiling options)."""

from __future__ import annotations

import inspect
import json
from dataclasses import replace

import pytest
import torch

from sana.device import GiB, DeviceInfo
from sana.memory import (
    FRAME_LADDER, PHASES, TIERS, VIDEO_TILE_LADDER_PX, Workload, clip_shape, describe_clip, dit_activations,
    plan_memory, sizes_from_directory, sizes_from_spec, sizes_of_clip_modules,
)
from sana.memory.families import WAN21_VAE, dit_count
from sana.registry import get_spec

GPU_GB = (12, 16, 24, 80)
VIDEO = {"video-2b-480p": (832, 480, 81), "video-2b-720p": (1280, 704, 81), "wm-2.6b": (1280, 704, 161)}


def gpu(gb: float, *, ram_gb: float = 64, free_fraction: float = 0.95, name: str | None = None) -> DeviceInfo:
    """A CUDA card of `gb` GiB (an H100/H200-like Hopper part) with some of it in use, in a host of `ram_gb`."""
    total = int(gb * GiB)
    return DeviceInfo(kind="cuda", name=name or f"described {gb} GB card", total_memory=total,
                      free_memory=int(total * free_fraction), ram_total=int(ram_gb * GiB),
                      ram_available=int(ram_gb * 0.75 * GiB), compute_capability=(9, 0), kernels=True)


H100, H200 = gpu(80, name="described H100"), gpu(140, ram_gb=128, name="described H200")
CPU = DeviceInfo(kind="cpu", name="CPU", total_memory=64 * GiB, free_memory=48 * GiB, ram_total=64 * GiB,
                 ram_available=48 * GiB)


@pytest.fixture(scope="module")
def sizes():
    return {name: sizes_from_spec(get_spec(name)) for name in VIDEO}


def work_for(name: str, frames: int | None = None, rows: int = 2) -> Workload:
    width, height, default = VIDEO[name]
    return Workload(width, height, rows=rows, frames=frames or default, conditioned=name.startswith("wm"), fps=16)


def plan_for(sizes, name: str, device: DeviceInfo, frames: int | None = None, **options):
    return plan_memory(device, sizes[name], work_for(name, frames), **options)


# -- sizes ------------------------------------------------------------------------------------------------------

def test_presets_size_the_released_models(sizes):
    video, hd, world = sizes["video-2b-480p"], sizes["video-2b-720p"], sizes["wm-2.6b"]
    for name, s in sizes.items():
        assert s.transformer_params == get_spec(name).params["transformer"] and s.source == "registry"
        assert s.vae_decoder_params == get_spec(name).params["vae"] and s.blocks == 20 and s.inner_dim == 2240
    assert (video.dit_kind, video.vae_kind, video.vae_scale_factor, video.vae_temporal_scale) == ("video", "wan", 8, 4)
    assert video.patch == (1, 2, 2) and video.latent_channels == 16 and video.mlp_ratio == 3.0
    assert video.native_resolution == 480 and hd.native_resolution == 720
    assert (hd.vae_kind, hd.vae_scale_factor, hd.vae_temporal_scale, hd.patch) == ("ltx2", 32, 8, (1, 1, 1))
    assert (world.dit_kind, world.vae_kind, world.softmax_blocks) == ("world", "ltx2", 5)
    assert world.text_encoder_params == 2_614_341_888


@pytest.mark.parametrize("name", VIDEO)
def test_config_counts_match_diffusers_modules(name):
    """Counting from a config gives diffusers' own parameter counts, whole and per block (the largest)."""
    from diffusers import SanaVideoTransformer3DModel, SanaWMTransformer3DModel

    config = {"_class_name": "SanaWMTransformer3DModel" if name.startswith("wm") else "SanaVideoTransformer3DModel",
              **get_spec(name).transformer}
    cls = SanaWMTransformer3DModel if name.startswith("wm") else SanaVideoTransformer3DModel
    with torch.device("meta"):
        model = cls(**{k: v for k, v in config.items() if not k.startswith("_")})
    blocks = getattr(model, "blocks", None) or model.transformer_blocks
    count = dit_count(config)
    assert count.params == sum(p.numel() for p in model.parameters())
    assert count.block_params == max(sum(p.numel() for p in b.parameters()) for b in blocks)


@pytest.mark.parametrize("config", [
    dict(_class_name="SanaVideoTransformer3DModel", in_channels=8, out_channels=6, num_attention_heads=2,
         attention_head_dim=16, num_layers=2, num_cross_attention_heads=3, cross_attention_head_dim=8,
         cross_attention_dim=32, caption_channels=20, mlp_ratio=3.0, attention_bias=True, sample_size=22,
         patch_size=(1, 1, 1), norm_elementwise_affine=True, guidance_embeds=True),
    dict(_class_name="SanaWMTransformer3DModel", in_channels=8, num_layers=4, hidden_size=48, num_attention_heads=2,
         softmax_every_n=2, linear_head_dim=24, chunk_plucker_post_attn_blocks=3, caption_channels=16,
         mlp_ratio=2.0, k_conv_only=False),
], ids=["video", "world"])
def test_tiny_config_counts_match_diffusers_modules(config):
    from diffusers import SanaVideoTransformer3DModel, SanaWMTransformer3DModel

    cls = SanaWMTransformer3DModel if "WM" in config["_class_name"] else SanaVideoTransformer3DModel
    model = cls(**{k: v for k, v in config.items() if not k.startswith("_")})
    assert dit_count(config).params == sum(p.numel() for p in model.parameters())


def _write_component(folder, config: dict, tensors: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))


def test_a_video_folder_is_sized_from_headers_and_configs(tmp_path):
    """Parameter counts come from the safetensors headers (whatever the tensors hold), shapes from the configs."""
    from safetensors.torch import save_file

    index = {"_class_name": "SanaVideoPipeline", "transformer": ["diffusers", "SanaVideoTransformer3DModel"],
             "vae": ["diffusers", "AutoencoderKLWan"], "text_encoder": ["transformers", "Gemma2Model"]}
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    config = {"_class_name": "SanaVideoTransformer3DModel", **get_spec("video-2b-480p").transformer}
    _write_component(tmp_path / "transformer", config, {"w": torch.zeros(3, 1000)})
    _write_component(tmp_path / "vae", dict(WAN21_VAE), {"w": torch.zeros(7, 100)})
    (tmp_path / "text_encoder").mkdir()
    (tmp_path / "text_encoder" / "config.json").write_text(json.dumps({"hidden_size": 2304}))
    save_file({"w": torch.zeros(5, 10)}, str(tmp_path / "text_encoder" / "model.safetensors"))
    s = sizes_from_directory(tmp_path)
    assert (s.transformer_params, s.vae_decoder_params, s.text_encoder_params) == (3000, 700, 50)
    assert s.block_params == dit_count(config).block_params and s.source == "weights"
    assert (s.dit_kind, s.vae_kind, s.patch, s.native_resolution) == ("video", "wan", (1, 2, 2), 480)
    assert sizes_from_directory(tmp_path, transformer_config=config).transformer_params == 3000  # the same config
    # A fine-tune's own config is counted from the config (its weights are elsewhere).
    tuned = {**config, "num_layers": 10}
    assert sizes_from_directory(tmp_path, transformer_config=tuned).transformer_params == dit_count(tuned).params


def test_clip_modules_are_counted_whatever_their_type():
    from diffusers import AutoencoderKLLTX2Video, SanaWMTransformer3DModel

    config = dict(in_channels=8, num_layers=2, hidden_size=48, num_attention_heads=2, softmax_every_n=2,
                  linear_head_dim=24, caption_channels=16, mlp_ratio=2.0)
    transformer = SanaWMTransformer3DModel(**config)
    vae = AutoencoderKLLTX2Video(latent_channels=8, block_out_channels=(8, 8, 8),
                                 decoder_block_out_channels=(8, 16, 32), layers_per_block=(1, 1, 1, 1),
                                 decoder_layers_per_block=(1, 1, 1, 1),
                                 spatio_temporal_scaling=(True,) * 3, decoder_spatio_temporal_scaling=(True,) * 3,
                                 decoder_inject_noise=(False,) * 4, downsample_type=("spatiotemporal",) * 3,
                                 upsample_type=("spatiotemporal",) * 3, upsample_residual=(True,) * 3,
                                 spatial_compression_ratio=32, temporal_compression_ratio=8)
    s = sizes_of_clip_modules(transformer, None, vae, transformer_config={"_class_name": "SanaWMTransformer3DModel",
                                                                            **config},
                              vae_config={"_class_name": "AutoencoderKLLTX2Video", **dict(vae.config)})
    assert s.transformer_params == sum(p.numel() for p in transformer.parameters())
    assert s.block_params == max(sum(p.numel() for p in b.parameters()) for b in transformer.blocks)
    assert s.vae_decoder_params == sum(p.numel() for p in vae.parameters()) and s.text_encoder_params == 0
    assert (s.dit_kind, s.vae_kind, s.vae_temporal_scale, s.latent_channels) == ("world", "ltx2", 8, 8)


# -- clips ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,frames,expected", [
    ("video-2b-480p", 81, (81, 21, 60, 104, 32_760)),
    ("video-2b-480p", 83, (81, 21, 60, 104, 32_760)),  # floored to 4k + 1, as diffusers does
    ("video-2b-720p", 81, (81, 11, 22, 40, 9_680)),
    ("wm-2.6b", 161, (161, 21, 22, 40, 18_480)),
    ("wm-2.6b", 961, (961, 121, 22, 40, 106_480)),
])
def test_clip_shapes_follow_the_vae_and_the_patch(sizes, name, frames, expected):
    shape = clip_shape(sizes[name], work_for(name, frames))
    assert (shape.frames, shape.latent_frames, shape.latent_height, shape.latent_width, shape.tokens) == expected


def test_the_clip_description_names_frames_duration_grid_and_tokens(sizes):
    text = describe_clip(sizes["video-2b-480p"], work_for("video-2b-480p"), fps=16)
    assert text == "81 frames (5.06 s at 16 fps) at 832x480, latent 21x60x104, 32,760 tokens"
    minute = plan_for(sizes, "wm-2.6b", H200, 961)
    assert minute.clip().startswith("961 frames (60.06 s at 16 fps)") and "121x22x40" in minute.clip()


# -- estimates: calibrated on diffusers' forwards (H200, bf16, batch 2) --------------------------------------------

@pytest.mark.parametrize("name,frames,measured_gib", [
    ("video-2b-480p", 81, 8.6),  # the anchor table: diffusers' forward, weights included
    ("video-2b-480p", 41, 2.30 + 3.96), ("video-2b-720p", 161, 2.48 + 3.97),  # H200, 2026-12-03, above the weights
    ("wm-2.6b", 81, 3.77 + 5.11), ("wm-2.6b", 161, 7.18 + 5.11), ("wm-2.6b", 481, 20.83 + 5.14),
])
def test_dit_peaks_match_the_measured_forwards(sizes, name, frames, measured_gib):
    plan = plan_for(sizes, name, H200, frames, mode="low")  # the DiT alone on the device while it denoises
    assert plan.peak("denoise") / GiB == pytest.approx(measured_gib, rel=0.05)


def test_dit_activations_are_linear_in_latent_frames_and_rows(sizes):
    s = sizes["wm-2.6b"]
    one = dit_activations(s, work_for("wm-2.6b", 161, rows=1), 2, kernels=True)
    assert dit_activations(s, work_for("wm-2.6b", 161), 2, kernels=True) == 2 * one
    minute = dit_activations(s, work_for("wm-2.6b", 961, rows=1), 2, kernels=True)
    assert minute == pytest.approx(one * 121 / 21, rel=1e-3)


# -- requirements ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cap_gb", [24, 16])
@pytest.mark.parametrize("device", [H100, H200], ids=["H100", "H200"])
def test_sana_video_480p_fits_under_a_cap(sizes, device, cap_gb):
    plan = plan_for(sizes, "video-2b-480p", device, max_vram=cap_gb * GiB)
    assert plan.fits and plan.peak_bytes <= plan.budget < cap_gb * GiB, plan.headline()
    assert plan.dtype == "bf16" and plan.cap == cap_gb * GiB


@pytest.mark.parametrize("name", VIDEO)
@pytest.mark.parametrize("gb", GPU_GB, ids=lambda gb: f"{gb}GB")
def test_every_card_gets_a_plan_for_the_default_clips(sizes, name, gb):
    plan = plan_for(sizes, name, gpu(gb))
    assert plan.fits, plan.headline()
    assert plan.decode_tile is None or plan.decode_tile >= 256


def test_more_memory_never_gives_a_lower_tier(sizes):
    for name in VIDEO:
        plans = [plan_for(sizes, name, gpu(gb)) for gb in (*GPU_GB, 140)]
        order = [(TIERS.index(p.tier), p.text_encoder_on_cpu) for p in plans]
        assert order == sorted(order, reverse=True), name


def test_sana_wm_161_frames_fits_under_24_gb(sizes):
    plan = plan_for(sizes, "wm-2.6b", H200, max_vram=24 * GiB)
    assert plan.fits and plan.peak_bytes <= plan.budget < 24 * GiB, plan.headline()
    assert plan.work.conditioned and plan.peak("condition") <= plan.budget


def test_a_minute_of_sana_wm_is_planned_with_what_it_needs(sizes):
    on_h200 = plan_for(sizes, "wm-2.6b", H200, 961)
    assert on_h200.fits and clip_shape(on_h200.sizes, on_h200.work).latent_frames == 121
    assert 40 * GiB < on_h200.peak_bytes < on_h200.budget  # 42.6 GiB of the DiT's activations at 106,480 tokens
    capped = plan_for(sizes, "wm-2.6b", H200, 961, max_vram=24 * GiB)
    assert not capped.fits and capped.tier == "minimal"
    assert "does not fit" in capped.headline() and "961 frames" in capped.headline()
    note = capped.notes()[0]
    assert note.startswith("needs about") and "106,480 tokens x 2 rows" in note
    assert capped.needs() > capped.peak_bytes > 24 * GiB
    # What the note asks for is enough: a card with that much free memory gets a plan that fits.
    assert plan_memory(gpu(capped.needs() / GiB / 0.95 + 1), capped.sizes, capped.work).fits


def test_the_vae_may_run_in_fp32(sizes):
    bf16 = plan_for(sizes, "video-2b-480p", H200)
    fp32 = plan_for(sizes, "video-2b-480p", H200, vae_dtype="fp32")
    assert fp32.weights("vae") == 2 * bf16.weights("vae") and fp32.peak("decode") > bf16.peak("decode")
    assert fp32.record()["vae dtype"] == "fp32" and "vae dtype" not in bf16.record()
    assert [r.dtype for r in fp32.rows()] == ["bf16", "bf16", "fp32"]


@pytest.mark.parametrize("gb", (8, 12, 16, 20, 24, 80))
def test_auto_takes_the_recommended_fp32_vae_only_where_it_keeps_the_placement(sizes, gb):
    """SANA-Video's own recipe decodes in fp32: `vae_dtype="auto"` takes it where that costs nothing but memory
    (the same tier, text-encoder home and decode tiles), else the compute dtype."""
    same = plan_for(sizes, "video-2b-480p", gpu(gb))
    wider = plan_for(sizes, "video-2b-480p", gpu(gb), vae_dtype="fp32")
    auto = plan_for(sizes, "video-2b-480p", gpu(gb), vae_dtype="auto")

    def layout(plan):
        return plan.tier, plan.text_encoder_on_cpu, plan.decode_tile, plan.decode_frames

    takes_fp32 = wider.fits and layout(wider) == layout(same)
    assert auto == (wider if takes_fp32 else same)
    assert auto.vae_dt == ("fp32" if takes_fp32 else "bf16")


def test_auto_vae_dtype_goes_both_ways_and_leaves_other_models_alone(sizes):
    chosen = {gb: plan_for(sizes, "video-2b-480p", gpu(gb), vae_dtype="auto").vae_dt for gb in (8, 16, 80)}
    assert chosen == {8: "bf16", 16: "bf16", 80: "fp32"}
    for name in ("wm-2.6b", "video-2b-720p"):
        expected = "bf16" if name == "wm-2.6b" else "fp32"
        assert plan_for(sizes, name, H200, vae_dtype="auto").vae_dt == expected
    assert plan_for(sizes, "video-2b-480p", CPU, vae_dtype="auto").vae_dt == "fp32"  # the CPU computes in fp32
    image = sizes_from_spec(get_spec("sana-1.6b"))
    assert plan_memory(H200, image, Workload(1024, 1024), vae_dtype="auto").vae_dt == "bf16"


def test_a_clip_on_the_cpu_plans_everything_in_ram(sizes):
    plan = plan_for(sizes, "video-2b-480p", CPU)
    assert plan.dtype == "fp32" and plan.record()["tier"] == "cpu" and plan.fits
    assert plan.lower("denoise") is None


# -- stepping down --------------------------------------------------------------------------------------------------

def test_ltx2_decode_shortens_pieces_then_shrinks_tiles_then_changes_tier(sizes):
    plan = plan_for(sizes, "video-2b-720p", H200)
    assert plan.tier == "high" and plan.decode_frames is None and plan.decode_tile is None
    steps = []
    while plan.tier == "high":
        plan = plan.lower("decode")
        steps.append((plan.decode_frames, plan.decode_tile))
    assert [f for f, _ in steps[:len(FRAME_LADDER)]] == list(FRAME_LADDER)
    assert [t for _, t in steps[len(FRAME_LADDER):-1]] == list(VIDEO_TILE_LADDER_PX)
    assert plan.tier == "balanced" and plan.fallbacks[-1] == "decode: --memory balanced"
    assert plan.fallbacks[0] == "decode: 64-frame pieces" and "decode: 256 px tiles" in plan.fallbacks


def test_wan_decode_shrinks_tiles_only(sizes):
    plan = plan_for(sizes, "video-2b-480p", H200)
    lower = plan.lower("decode")
    assert lower.decode_frames is None and lower.decode_tile == 768 and lower.tier == plan.tier
    assert lower.peak("decode") < plan.peak("decode")
    condition = plan.lower("condition")  # the first frame's encode tiles the same way
    assert condition.decode_tile == 768 and condition.fallbacks == ("condition: 768 px tiles",)


def test_denoise_steps_down_to_streamed_blocks(sizes):
    plan = plan_for(sizes, "wm-2.6b", H200)
    seen = []
    while plan is not None:
        seen.append(plan.tier)
        plan = plan.lower("denoise")
    assert seen == ["high", "balanced", "low", "minimal"]
    low = plan_for(sizes, "wm-2.6b", H200, mode="low")
    assert low.on_device("condition") == low.on_device("decode") == {"vae"}  # the first frame's encode
    minimal = plan_for(sizes, "wm-2.6b", H200, mode="minimal")
    s = minimal.sizes
    assert minimal.weights("transformer") == (s.transformer_params - 18 * s.block_params) * 2


# -- what a dry run prints -----------------------------------------------------------------------------------------

def test_rows_headline_and_record_describe_the_clip(sizes):
    plan = plan_for(sizes, "wm-2.6b", H200, max_vram=24 * GiB)
    rows = plan.rows()
    assert [r.component.split(" (")[0] for r in rows] == ["text encoder", "transformer", "VAE"]
    assert rows[2].component == "VAE (LTX-2, 1.22B params)"
    assert plan.tile_description() in rows[2].where and "frames" in rows[2].where
    assert max(r.peak for r in rows if r.peak is not None) == plan.peak_bytes
    assert "161 frames" in plan.headline()
    record = plan.record()
    assert record["clip"].startswith("161 frames (10.06 s at 16 fps)") and "18,480 tokens" in record["clip"]
    wan = plan_for(sizes, "video-2b-480p", H200)
    assert wan.tile_description() == "a latent frame at a time (causal), whole frames"
    assert "VAE (Wan 2.1, 127M params)" in [r.component for r in wan.rows()]
    assert set(PHASES) == {"encode", "condition", "denoise", "decode"}


def test_the_plan_table_prints_a_clip(sizes):
    from rich.console import Console

    from sana_cli.generation import plan_table

    console = Console(width=200, record=True)
    console.print(plan_table(plan_for(sizes, "video-2b-720p", gpu(12)), "video-2b-720p"))
    text = console.export_text()
    for expected in ("text encoder", "transformer", "VAE (LTX-2", "81 frames", "predicted peak"):
        assert expected in text, expected


# -- placement ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["video-2b-480p", "wm-2.6b"])
def test_video_tiling_gives_diffusers_enable_tiling_kwargs(sizes, name):
    from diffusers import AutoencoderKLLTX2Video, AutoencoderKLWan

    from sana.placement import video_decode_tiling

    cls = AutoencoderKLWan if name == "video-2b-480p" else AutoencoderKLLTX2Video
    accepted = set(inspect.signature(cls.enable_tiling).parameters) - {"self"}
    plan = plan_for(sizes, name, H200)
    whole = video_decode_tiling(replace(plan, decode_tile=None, decode_frames=None))
    assert not whole.spatial and not whole.framewise and set(whole.kwargs) <= accepted
    scale = plan.sizes.vae_scale_factor
    tiled = video_decode_tiling(replace(plan, decode_tile=512, decode_frames=32 if name == "wm-2.6b" else None))
    assert tiled.spatial and set(tiled.kwargs) <= accepted
    k = tiled.kwargs
    assert k["tile_sample_min_width"] <= 512 and k["tile_sample_stride_width"] < k["tile_sample_min_width"]
    assert all(v % scale == 0 for key, v in k.items() if "num_frames" not in key)
    if name == "wm-2.6b":
        assert tiled.framewise and set(tiled.kwargs) == accepted
        assert (k["tile_sample_min_num_frames"], k["tile_sample_stride_num_frames"]) == (32, 24)


def _tiny_wan():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    return AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True]).eval()


def test_a_tiling_applies_to_a_diffusers_vae_and_decodes_every_frame(sizes):
    from sana.placement import video_decode_tiling

    vae = _tiny_wan()
    tiny = replace(sizes["video-2b-480p"], vae_scale_factor=8)
    plan = plan_memory(CPU, tiny, Workload(64, 32, frames=5))
    tiled = video_decode_tiling(replace(plan, decode_tile=32))
    tiled.apply(vae)
    assert vae.use_tiling and vae.tile_sample_min_width == tiled.kwargs["tile_sample_min_width"]
    z = torch.randn(1, 16, 2, 4, 8)
    with torch.no_grad():
        frames = vae.decode(z).sample
        video_decode_tiling(plan).apply(vae)  # the whole frame: tiles off again
        whole = vae.decode(z).sample
    assert not vae.use_tiling and frames.shape == whole.shape == (1, 3, 5, 32, 64)


def test_a_diffusers_vae_is_offloaded_like_the_dcae():
    from sana.placement import Offloaded

    vae = _tiny_wan()
    z = torch.randn(1, 16, 1, 4, 4)
    with torch.no_grad():
        expected = vae.decode(z).sample
        home = Offloaded(vae, torch.device("cpu"), pin=False)
        home.to_device()
        visiting = vae.decode(z).sample
        home.to_host()
        back = vae.decode(z).sample
    assert torch.equal(visiting, expected) and torch.equal(back, expected)


class _Uneven(torch.nn.Module):
    """Blocks that differ (as the world model's GDN and softmax blocks do), under diffusers' attribute name."""

    def __init__(self):
        super().__init__()
        self.proj_in = torch.nn.Linear(6, 8)
        self.transformer_blocks = torch.nn.ModuleList(
            [torch.nn.Linear(8, 8, bias=i % 2 == 0) for i in range(4)])

    def forward(self, x):
        x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = x + torch.tanh(block(x))
        return x


def test_streamed_blocks_that_differ_run_from_slots_of_the_largest():
    from sana.placement import StreamedBlocks

    torch.manual_seed(0)
    model = _Uneven()
    x = torch.randn(3, 6)
    with torch.no_grad():
        expected = model(x)
        streamed = StreamedBlocks(model, torch.device("cpu"), pin=False)
        assert streamed.slot_bytes == max(f.nbytes for f in streamed.flats) > min(f.nbytes for f in streamed.flats)
        streamed.to_device()
        out, again = model(x), model(x)
        streamed.to_host()
    assert torch.equal(out, expected) and torch.equal(again, expected)
