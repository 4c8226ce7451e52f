"""Our DC-AE decoder against diffusers' AutoencoderDC on the same tiny random weights, fp32 on the CPU: whole and
tiled decodes, every block / norm / activation / upsampling option, loading errors, and no diffusers import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sana.errors import SanaError
from sana.loading import load_vae_decoder
from sana.memory import vae_decoder_sizes
from sana.models.dcae import DCAEConfig, Tiling
from tests.tiny_transformer import noise_all_parameters

TOLERANCE = 1e-4  # max abs difference, fp32 (outputs are O(1))
NANO_VAE = Path(__file__).resolve().parents[1] / "sana" / "nano" / "model" / "vae"

_ENCODER = dict(encoder_block_types="ResBlock", encoder_layers_per_block=(1, 1, 1),
                encoder_qkv_multiscales=((), (), ()), downsample_block_type="Conv")

CONFIGS = {
    # The tiny pipelines' VAE: nearest-interpolation up blocks, attention only in the deepest stage.
    "tiny-pipeline": dict(
        latent_channels=8, attention_head_dim=4,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 16, 16),
        encoder_layers_per_block=(1, 1, 1), encoder_qkv_multiscales=((), (), (5,)), downsample_block_type="Conv",
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"), decoder_block_out_channels=(8, 16, 16),
        decoder_layers_per_block=(1, 1, 1), decoder_qkv_multiscales=((), (), (5,)),
        decoder_norm_types="rms_norm", decoder_act_fns="silu", upsample_block_type="interpolate",
        scaling_factor=0.41407,
    ),
    # SANA's f32c32 (mit-han-lab/dc-ae-f32c32-sana-1.x-diffusers) with the channels divided by 16.
    "sana-f32c32-shape": dict(
        latent_channels=8, attention_head_dim=8,
        encoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        encoder_block_out_channels=(8, 16, 32, 32, 64, 64), encoder_layers_per_block=(1,) * 6,
        encoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)), downsample_block_type="Conv",
        decoder_block_types=("ResBlock",) * 3 + ("EfficientViTBlock",) * 3,
        decoder_block_out_channels=(8, 16, 32, 32, 64, 64), decoder_layers_per_block=(3,) * 6,
        decoder_qkv_multiscales=((), (), (), (5,), (5,), (5,)), decoder_norm_types="rms_norm",
        decoder_act_fns="silu", upsample_block_type="interpolate", scaling_factor=0.41407,
    ),
    # The original DC-AE 1.0 decoder style: BatchNorm + ReLU in the ResBlock stages, pixel-shuffle up blocks.
    "batchnorm-relu-pixel-shuffle": dict(
        latent_channels=4, attention_head_dim=8, encoder_block_out_channels=(8, 16, 32), **_ENCODER,
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"), decoder_block_out_channels=(8, 16, 32),
        decoder_layers_per_block=(2, 1, 2), decoder_qkv_multiscales=((), (), (5,)),
        decoder_norm_types=("batch_norm", "batch_norm", "rms_norm"), decoder_act_fns=("relu", "relu", "silu"),
        upsample_block_type="pixel_shuffle", scaling_factor=0.3,
    ),
    # No input shortcut, several scales, batch-norm attention, heads that leave channels over (24 // 10), other
    # activations (none in a ResBlock), and a first stage without layers (conv_out is then an up block).
    "odd-options": dict(
        latent_channels=6, attention_head_dim=10, encoder_block_out_channels=(12, 24, 24), **_ENCODER,
        decoder_block_types=("ResBlock", "EfficientViTBlock", "EfficientViTBlock"),
        decoder_block_out_channels=(12, 24, 24), decoder_layers_per_block=(0, 2, 1),
        decoder_qkv_multiscales=((), (3, 5), (5,)), decoder_norm_types=("rms_norm", "batch_norm", "rms_norm"),
        decoder_act_fns=("gelu", "mish", None), decoder_in_shortcut=False, decoder_conv_act_fn="silu",
        upsample_block_type="pixel_shuffle",
    ),
    "resblocks-only-gelu": dict(
        latent_channels=4, attention_head_dim=4, encoder_block_out_channels=(4, 8, 16), **_ENCODER,
        decoder_block_types="ResBlock", decoder_block_out_channels=(4, 8, 16), decoder_layers_per_block=(1, 2, 1),
        decoder_qkv_multiscales=((), (), ()), decoder_norm_types="rms_norm", decoder_act_fns="gelu",
        decoder_conv_act_fn="swish", upsample_block_type="interpolate",
    ),
    # Interpolating up blocks whose shortcut repeats each input channel 3 times (16 -> 12) and 1 time (64 -> 16).
    "interpolate-shortcut-repeats": dict(
        latent_channels=4, attention_head_dim=8, encoder_block_out_channels=(12, 16, 64), **_ENCODER,
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"), decoder_block_out_channels=(12, 16, 64),
        decoder_layers_per_block=(1, 1, 1), decoder_qkv_multiscales=((), (), (5,)), decoder_norm_types="rms_norm",
        decoder_act_fns="silu", upsample_block_type="interpolate",
    ),
    # A first stage without layers with interpolation: conv_out is an up block without shortcut.
    "interpolate-conv-out": dict(
        latent_channels=4, attention_head_dim=8, encoder_block_out_channels=(8, 16, 32), **_ENCODER,
        decoder_block_types="ResBlock", decoder_block_out_channels=(8, 16, 32), decoder_layers_per_block=(0, 1, 2),
        decoder_qkv_multiscales=((), (), ()), decoder_norm_types=("rms_norm", "batch_norm", "rms_norm"),
        decoder_act_fns="relu", upsample_block_type="interpolate",
    ),
    "nano": "nano",  # sana/nano/model/vae/config.json (the config of the built-in model)
}
NANO_CONFIG = {  # used when the nano model is not installed
    "attention_head_dim": 16, "decoder_act_fns": "silu", "decoder_block_out_channels": [16, 32, 64, 64, 128],
    "decoder_block_types": ["ResBlock"] * 4 + ["EfficientViTBlock"], "decoder_conv_act_fn": "relu",
    "decoder_in_shortcut": True, "decoder_layers_per_block": [1] * 5, "decoder_norm_types": "rms_norm",
    "decoder_qkv_multiscales": [[], [], [], [], [5]], "downsample_block_type": "Conv",
    "encoder_block_out_channels": [16, 32, 64, 64, 128], "encoder_block_types": ["ResBlock"] * 4 + ["EfficientViTBlock"],
    "encoder_layers_per_block": [1] * 5, "encoder_out_shortcut": True, "encoder_qkv_multiscales": [[], [], [], [], [5]],
    "in_channels": 3, "latent_channels": 8, "scaling_factor": 0.07712777421037108, "upsample_block_type": "interpolate",
}
LATENTS = {  # (height, width) per config: a square, a non-square, and one small enough for quadratic attention
    "tiny-pipeline": [(8, 8), (6, 10), (2, 2)],
    "sana-f32c32-shape": [(4, 4), (3, 5), (1, 2)],
    "batchnorm-relu-pixel-shuffle": [(6, 6), (5, 7), (2, 1)],
    "odd-options": [(6, 6), (4, 7), (3, 3)],
    "resblocks-only-gelu": [(5, 5), (3, 6)],
    "interpolate-shortcut-repeats": [(4, 4), (3, 5), (1, 1)],
    "interpolate-conv-out": [(4, 5), (1, 2)],
    "nano": [(16, 16), (8, 12), (1, 1)],
}


def config_of(name: str) -> dict:
    if name != "nano":
        return CONFIGS[name]
    path = NANO_VAE / "config.json"
    data = json.loads(path.read_text()) if path.is_file() else NANO_CONFIG
    return {k: v for k, v in data.items() if not k.startswith("_")}


def build_reference(name: str, folder: Path | None = None, seed: int = 0, **save):
    """A noised diffusers AutoencoderDC of config `name` in eval mode (BatchNorm statistics drawn too), saved to
    `folder` when given."""
    from diffusers import AutoencoderDC

    torch.manual_seed(seed)
    vae = AutoencoderDC(**config_of(name))
    noise_all_parameters(vae, seed + 1, scale=0.1)
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for module in vae.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
    vae.eval()
    if folder is not None:
        vae.save_pretrained(folder, **save)
    return vae


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def latents_for(vae, size: tuple[int, int], batch: int = 2, seed: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, vae.config.latent_channels, *size, generator=gen)


# -- parity ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """name -> (diffusers reference, ours loaded from its saved folder)."""
    built = {}
    for name in CONFIGS:
        folder = tmp_path_factory.mktemp(name)
        ref = build_reference(name, folder)
        built[name] = ref, load_vae_decoder(folder)
    return built


@pytest.mark.parametrize("name,size", [(n, s) for n in CONFIGS for s in LATENTS[n]],
                         ids=[f"{n}-{s[0]}x{s[1]}" for n in CONFIGS for s in LATENTS[n]])
def test_decode_matches_diffusers(pairs, name, size):
    ref, ours = pairs[name]
    z = latents_for(ref, size)
    with torch.no_grad():
        expected = ref.decode(z).sample
        got = ours.decode(z)
    f = ref.spatial_compression_ratio
    assert got.shape == (2, 3, size[0] * f, size[1] * f)
    assert expected.abs().max() > 0.1  # the weights do something
    assert max_difference(got, expected) <= TOLERANCE


# (tile, stride) per axis in latents, latent (height, width): blends in both directions, an uneven last tile,
# tiles without overlap, a tile wider than the image, a single-latent overlap.
TILINGS = [
    (Tiling(4, 4, 3, 3), (8, 8)),
    (Tiling(4, 5, 3, 3), (7, 11)),
    (Tiling(3, 3, 3, 3), (6, 8)),
    (Tiling(3, 16, 2, 16), (7, 9)),
    (Tiling(5, 4, 4, 2), (9, 6)),
]


@pytest.mark.parametrize("name", ["tiny-pipeline", "batchnorm-relu-pixel-shuffle", "nano"])
@pytest.mark.parametrize("tiling,size", TILINGS, ids=[f"{t.height}x{t.width}s{t.stride_height}x{t.stride_width}-"
                                                      f"{s[0]}x{s[1]}" for t, s in TILINGS])
def test_tiled_decode_matches_diffusers_tiling(pairs, name, tiling, size):
    ref, ours = pairs[name]
    f = ref.spatial_compression_ratio
    z = latents_for(ref, size, batch=1)
    ref.enable_tiling(tile_sample_min_height=tiling.height * f, tile_sample_min_width=tiling.width * f,
                      tile_sample_stride_height=tiling.stride_height * f, tile_sample_stride_width=tiling.stride_width * f)
    try:
        with torch.no_grad():
            expected = ref.decode(z).sample
    finally:
        ref.disable_tiling()
    with torch.no_grad():
        got = ours.decode(z, tile=tiling)
        whole = ours.decode(z)
    assert max_difference(got, expected) <= TOLERANCE
    assert max_difference(got, whole) > 1e-3  # tiles were really used (tile borders differ from the whole image)


def test_tiles_larger_than_the_latents_decode_in_one_piece(pairs):
    _, ours = pairs["tiny-pipeline"]
    z = latents_for(ours, (6, 6))
    with torch.no_grad():
        assert torch.equal(ours.decode(z, tile=Tiling(6, 8, 4, 4)), ours.decode(z))
    with pytest.raises(ValueError, match="strides"):
        Tiling(4, 4, 5, 4)


def test_activations_are_channels_last_and_bf16_runs(pairs):
    """Any latent layout and channels-last weights give the same image; activations stay channels-last, so the
    token views of the EfficientViT blocks are views, not copies."""
    import copy

    ref, ours = pairs["sana-f32c32-shape"]
    z = latents_for(ref, (3, 4))
    seen = []
    hook = ours.up_blocks[5][0].attn.register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    try:
        with torch.no_grad():
            expected = ours.decode(z)
            assert torch.equal(ours.decode(z.contiguous(memory_format=torch.channels_last)), expected)
    finally:
        hook.remove()
    assert seen == [True, True] and expected.is_contiguous(memory_format=torch.channels_last)
    weights_cl = copy.deepcopy(ours).to(memory_format=torch.channels_last)
    half = copy.deepcopy(ours).to(torch.bfloat16)
    with torch.no_grad():
        assert max_difference(weights_cl.decode(z), expected) <= TOLERANCE
        got = half.decode(z.to(torch.bfloat16)).float()
    assert half.dtype == torch.bfloat16 and ours.dtype == torch.float32
    assert (got - expected).abs().mean() < 0.05 * expected.abs().mean()


def test_config_and_sizes_match_diffusers():
    from diffusers import AutoencoderDC

    from sana.benchmarks.image import DCAE_F32C32  # the released SANA DC-AE (mit-han-lab/dc-ae-f32c32-sana-1.x-diffusers)

    # Two stages with diffusers' six-stage defaults for the rest: extra per-stage entries are ignored, as there.
    two_stages = dict(latent_channels=4, encoder_block_out_channels=(8, 16), decoder_block_out_channels=(8, 16),
                      encoder_layers_per_block=(1, 1), decoder_block_types=("ResBlock", "EfficientViTBlock"),
                      attention_head_dim=8)
    for config in [config_of(name) for name in CONFIGS] + [DCAE_F32C32, two_stages]:
        with torch.device("meta"):
            ref = AutoencoderDC(**config)
        params, scale, width = vae_decoder_sizes(config)
        # Our interpolating up blocks hold four 2x2 phase kernels (16 taps) where diffusers holds one 3x3 (9 taps).
        extra = 0
        if ref.config.upsample_block_type == "interpolate":
            for name, module in ref.decoder.named_modules():
                if type(module).__name__ == "DCUpBlock2d":
                    extra += module.conv.weight.numel() * 7 // 9 + 3 * module.conv.bias.numel()
        assert params == sum(p.numel() for p in ref.decoder.parameters()) + extra
        assert scale == ref.spatial_compression_ratio
        assert width == ref.config.decoder_block_out_channels[0]
    cfg = DCAEConfig.from_dict(DCAE_F32C32)
    assert cfg.spatial_compression_ratio == 32 and vae_decoder_sizes(DCAE_F32C32)[0] == 173_222_403  # diffusers: 159,223,171
    assert cfg.decoder_block_types[3:] == ("EfficientViTBlock",) * 3 and cfg.decoder_act_fns == ("silu",) * 6


@pytest.mark.skipif(not (NANO_VAE / "diffusion_pytorch_model.safetensors").is_file(), reason="nano model not installed")
def test_trained_nano_decoder_matches_diffusers():
    from diffusers import AutoencoderDC

    ref = AutoencoderDC.from_pretrained(NANO_VAE).eval()
    ours = load_vae_decoder(NANO_VAE)
    z = latents_for(ref, (16, 16)) / ref.config.scaling_factor
    with torch.no_grad():
        assert max_difference(ours.decode(z), ref.decode(z).sample) <= TOLERANCE


# -- loading -----------------------------------------------------------------------------------------------------

def raises_one_line(match, fn, *args, **kwargs) -> str:
    with pytest.raises(SanaError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def rewrite_weights(folder: Path, edit) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    edit(state)
    save_file(state, path)


def test_missing_tensor_is_one_error(tmp_path):
    build_reference("tiny-pipeline", tmp_path)
    rewrite_weights(tmp_path, lambda s: s.pop("decoder.up_blocks.0.1.conv2.weight"))
    raises_one_line(r"lacks 1 weight\(s\): decoder.up_blocks.0.1.conv2.weight", load_vae_decoder, tmp_path)


def test_missing_attention_projection_is_one_error(tmp_path):
    build_reference("tiny-pipeline", tmp_path)
    rewrite_weights(tmp_path, lambda s: s.pop("decoder.up_blocks.2.0.attn.to_k.weight"))
    raises_one_line(r"lacks decoder.up_blocks.2.0.attn.to_k.weight", load_vae_decoder, tmp_path)
    rewrite_weights(tmp_path, lambda s: s.update({"decoder.up_blocks.2.0.attn.to_k.weight": torch.zeros(12, 16)}))
    raises_one_line(r"to_q/k/v.weight have shapes \(16, 16\), \(12, 16\), \(16, 16\)", load_vae_decoder, tmp_path)


def test_mismatched_tensor_is_one_error(tmp_path):
    build_reference("tiny-pipeline", tmp_path)
    rewrite_weights(tmp_path, lambda s: s.update({"decoder.conv_out.bias": torch.zeros(4)}))
    raises_one_line(r"'decoder.conv_out.bias' has shape \(4,\), the config expects \(3,\)", load_vae_decoder, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    rewrite_weights(tmp_path, lambda s: s.update({"decoder.conv_out.bias": torch.zeros(3)}))
    (tmp_path / "config.json").write_text(json.dumps({**config, "decoder_block_out_channels": [8, 16, 32]}))
    raises_one_line(r"'decoder.conv_in.bias' has shape \(16,\), the config expects \(32,\)", load_vae_decoder, tmp_path)


def test_fused_projection_of_the_wrong_width_names_the_diffusers_tensors(tmp_path):
    build_reference("tiny-pipeline", tmp_path)

    def narrower(state):
        for n in "qkv":
            key = f"decoder.up_blocks.2.0.attn.to_{n}.weight"
            state[key] = state[key][:12]

    rewrite_weights(tmp_path, narrower)
    raises_one_line(r"'decoder.up_blocks.2.0.attn.to_q/to_k/to_v.weight' has shape \(36, 16\), the config expects \(48, 16\)",
                    load_vae_decoder, tmp_path)


def test_unsupported_config_and_files_are_one_error(tmp_path):
    build_reference("tiny-pipeline", tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "decoder_norm_types": "layer_norm"}))
    raises_one_line("unsupported VAE config.*norm type 'layer_norm'", load_vae_decoder, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "decoder_act_fns": ["silu", "silu"]}))
    raises_one_line("decoder_act_fns has 2 entries for 3 decoder stages", load_vae_decoder, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    rewrite_weights(tmp_path, lambda s: [s.pop(k) for k in list(s) if k.startswith("decoder.")])
    raises_one_line("has no decoder weights", load_vae_decoder, tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    raises_one_line("corrupt or truncated", load_vae_decoder, tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    raises_one_line("no VAE weights", load_vae_decoder, tmp_path)


def test_variant_files_and_dtype(tmp_path):
    ref = build_reference("tiny-pipeline", tmp_path)
    ref.to(torch.bfloat16).save_pretrained(tmp_path, variant="bf16")
    ours = load_vae_decoder(tmp_path, variant="bf16", dtype=torch.float32)
    assert ours.load_report.files == ["diffusion_pytorch_model.bf16.safetensors"]
    assert ours.dtype == torch.float32 and ours.load_report.unexpected == []
    assert torch.equal(ours.conv_in.weight, ref.decoder.conv_in.weight.float())
    plain = load_vae_decoder(tmp_path, variant="fp16", dtype=torch.bfloat16)  # no fp16 files: the default ones
    assert plain.load_report.files == ["diffusion_pytorch_model.safetensors"] and plain.dtype == torch.bfloat16
    assert plain.config.scaling_factor == pytest.approx(0.41407) and plain.spatial_compression_ratio == 4


def test_loading_and_decoding_never_import_diffusers(tmp_path):
    build_reference("tiny-pipeline", tmp_path)
    code = (
        "import sys, torch\n"
        "from pathlib import Path\n"
        "from sana.loading import load_vae_decoder\n"
        "from sana.memory import vae_decoder_sizes\n"
        "from sana.placement import decode_tiling\n"
        f"vae = load_vae_decoder(Path({str(tmp_path)!r}))\n"
        "vae.decode(torch.zeros(1, 8, 4, 4))\n"
        "vae_decoder_sizes({})\n"
        "assert not [m for m in sys.modules if m.startswith('diffusers')], 'diffusers was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# -- GPU -----------------------------------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "reference-ops"])
def test_gpu_real_config_bf16_matches_diffusers(kernels):
    """SANA's f32c32 DC-AE at its real size (random weights, bf16) at 1024 px, whole and in 3x3 tiles: our decoder
    (Triton linear attention and Mix-FFN middle, or the PyTorch references) against diffusers' AutoencoderDC."""
    from diffusers import AutoencoderDC

    from sana import ops
    from sana.benchmarks.image import DCAE_F32C32
    from sana.loading import vae_decoder_from_state

    torch.manual_seed(0)
    ref = AutoencoderDC(**DCAE_F32C32).to("cuda", torch.bfloat16).eval()
    ours = vae_decoder_from_state(dict(ref.config), ref.state_dict(), device="cuda")
    z = torch.randn(1, 32, 32, 32, device="cuda", dtype=torch.bfloat16)
    was = ops.kernels_enabled()
    ops.set_kernels_enabled(kernels)
    try:
        with torch.no_grad():
            expected = ref.decode(z).sample.float()
            got = ours.decode(z).float()
            ref.enable_tiling(tile_sample_min_height=640, tile_sample_min_width=640, tile_sample_stride_height=384,
                              tile_sample_stride_width=384)
            expected_tiled = ref.decode(z).sample.float()
            got_tiled = ours.decode(z, tile=Tiling.square(20, 12)).float()
    finally:
        ops.set_kernels_enabled(was)
    for a, b in ((got, expected), (got_tiled, expected_tiled)):
        assert ((a - b).norm() / b.norm()).item() < 2e-2
