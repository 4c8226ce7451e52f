"""What the planner knows of the video and world-model families without building their modules: parameter counts
from diffusers-style configs (`SanaVideoTransformer3DModel`, `SanaWMTransformer3DModel`) and the geometry of their
VAEs (`AutoencoderKLWan`, `AutoencoderKLLTX2Video`).

Counting from a config keeps a dry run free of downloads and of the model code. The counts follow diffusers 0.42.1's
module layouts tensor by tensor (tests build diffusers' classes on the meta device and compare); buffers (RoPE
tables, the WM's `recall_gate`) are not parameters and are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Class defaults of diffusers 0.42.1 for the keys a config may leave out (a config.json written by diffusers has
# them all; a preset may hold only some). The video DiT's class default mlp_ratio is 2.5; the releases set 3.0.
VIDEO_DIT_DEFAULTS = dict(
    in_channels=16, out_channels=None, num_attention_heads=20, attention_head_dim=112, num_layers=20,
    num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240, caption_channels=2304,
    mlp_ratio=2.5, attention_bias=False, sample_size=30, patch_size=(1, 2, 2), norm_elementwise_affine=False,
    guidance_embeds=False, qk_norm="rms_norm_across_heads",
)
# SanaWMTransformer3DModel's defaults are the public SANA-WM_bidirectional release.
WORLD_DIT_DEFAULTS = dict(
    in_channels=128, num_layers=20, hidden_size=2240, num_attention_heads=20, patch_size=(1, 1, 1),
    softmax_every_n=4, linear_head_dim=112, ffn_type="GLUMBConvTemp", t_kernel_size=3, conv_kernel_size=4,
    k_conv_only=True, qk_norm=True, cross_norm=True, y_norm=True, use_chunk_plucker_post_attn=True,
    chunk_plucker_channels=48, chunk_plucker_post_attn_blocks=20, caption_channels=2304, mlp_ratio=3.0,
    image_size=720, pred_sigma=False,
)
# The released VAEs (configs of the SANA-Video 480p / 720p repos; SANA-WM uses the LTX-2 one). Parameter counts
# are the whole autoencoder: image-to-video and the world model encode their first frame.
WAN21_VAE = dict(_class_name="AutoencoderKLWan", base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                 scale_factor_spatial=8, scale_factor_temporal=4)
LTX2_VAE = dict(_class_name="AutoencoderKLLTX2Video", latent_channels=128, decoder_block_out_channels=[256, 512, 1024],
                patch_size=4, spatial_compression_ratio=32, temporal_compression_ratio=8)
VAE_PARAMS = {"wan": 126_892_531, "ltx2": 1_222_479_601}
# diffusers' resolution bins by the video DiT's sample_size (ASPECT_RATIO_480_BIN / ASPECT_RATIO_720_BIN).
VIDEO_BINS = {30: 480, 22: 720}


@dataclass(frozen=True)
class DitCount:
    """Parameters of a DiT: all of them, the largest block (a streaming slot holds it), blocks, width, patch."""

    params: int
    block_params: int
    blocks: int
    inner_dim: int
    patch: tuple[int, int, int]
    mlp_ratio: float
    softmax_blocks: int = 0  # WM blocks with softmax attention over all tokens


@dataclass(frozen=True)
class VaeGeometry:
    """A VAE as the decode estimates see it."""

    kind: str  # "dcae" | "wan" | "ltx2"
    spatial: int  # pixels per latent along a side
    temporal: int  # pixel frames per latent frame after the first (1 for images)
    latent_channels: int
    decoder_width: int  # channels of the decoder's finest stage, per output pixel (LTX-2: over its 4x4 patch)


def dit_kind(config: dict) -> str:
    """"image", "video" or "world" from a transformer config's `_class_name` (image when it names none)."""
    name = str(config.get("_class_name", ""))
    if name.startswith("SanaWM"):
        return "world"
    if name.startswith("SanaVideo"):
        return "video"
    return "image"


def vae_kind(config: dict) -> str:
    """"dcae", "wan" or "ltx2" from a VAE config's `_class_name`."""
    name = str(config.get("_class_name", "AutoencoderDC"))
    if name == "AutoencoderKLWan":
        return "wan"
    if name.startswith("AutoencoderKLLTX"):
        return "ltx2"
    return "dcae"


def vae_geometry(config: dict) -> VaeGeometry:
    """Compression, latent channels and finest decoder width of a Wan or LTX-2 VAE config.

    LTX-2's ratios must be in the config (diffusers' SANA pipelines read the config keys, not the computed
    attributes); the released configs have them.
    """
    kind = vae_kind(config)
    if kind == "wan":
        base = int(config.get("decoder_base_dim") or config.get("base_dim", 96))
        mult = list(config.get("dim_mult", [1, 2, 4, 4]))
        return VaeGeometry("wan", int(config.get("scale_factor_spatial", 8)),
                           int(config.get("scale_factor_temporal", 4)), int(config.get("z_dim", 16)),
                           base * int(mult[0]))
    if kind == "ltx2":
        patch = int(config.get("patch_size", 4))
        widths = list(config.get("decoder_block_out_channels", [256, 512, 1024]))
        return VaeGeometry("ltx2", int(config.get("spatial_compression_ratio") or 32),
                           int(config.get("temporal_compression_ratio") or 8),
                           int(config.get("latent_channels", 128)), max(1, int(widths[0]) // (patch * patch)))
    raise ValueError(f"{config.get('_class_name')} is not a video VAE")


def video_vae_for(transformer_config: dict, kind: str) -> dict:
    """The released VAE config a video/world DiT pairs with: LTX-2 for 128 latent channels (and SANA-WM), else Wan."""
    if kind == "world":
        return LTX2_VAE
    cfg = {**VIDEO_DIT_DEFAULTS, **_plain(transformer_config)}
    return LTX2_VAE if int(cfg["in_channels"]) == LTX2_VAE["latent_channels"] else WAN21_VAE


def dit_count(config: dict) -> DitCount:
    """Parameter counts of a video or world-model DiT config (diffusers' key names)."""
    kind = dit_kind(config)
    if kind == "video":
        return _video_count({**VIDEO_DIT_DEFAULTS, **_plain(config)})
    if kind == "world":
        return _world_count({**WORLD_DIT_DEFAULTS, **_plain(config)})
    raise ValueError(f"{config.get('_class_name')!r} is not a video or world-model transformer")


def native_resolution(config: dict) -> int:
    """The resolution class (px) a video/world DiT was trained at: 480 or 720."""
    if dit_kind(config) == "world":
        return int({**WORLD_DIT_DEFAULTS, **_plain(config)}["image_size"])
    cfg = {**VIDEO_DIT_DEFAULTS, **_plain(config)}
    return VIDEO_BINS.get(int(cfg["sample_size"]), 480)


# ---------------------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------------------

def _linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def _mix_ffn(dim: int, hidden: int, t_kernel: int) -> int:
    """GLUMBTempConv / GLUMBConvTemp: 1x1 conv to 2*hidden (bias), depthwise 3x3 (bias), 1x1 back (no bias), and
    the residual temporal (t_kernel, 1) conv (no bias)."""
    return _linear(dim, 2 * hidden) + (2 * hidden * 9 + 2 * hidden) + hidden * dim + dim * dim * t_kernel


def _video_count(cfg: dict) -> DitCount:
    d = int(cfg["num_attention_heads"]) * int(cfg["attention_head_dim"])
    d_cross = int(cfg["num_cross_attention_heads"]) * int(cfg["cross_attention_head_dim"])
    hidden = int(float(cfg["mlp_ratio"]) * d)
    patch = tuple(int(p) for p in cfg["patch_size"])
    p = math.prod(patch)
    qk_norm = cfg["qk_norm"] is not None
    bias = bool(cfg["attention_bias"])
    # Self-attention: q, k, v (bias per attention_bias), qk RMSNorm across heads, out projection with bias.
    attn1 = 3 * _linear(d, d, bias) + (2 * d if qk_norm else 0) + _linear(d, d)
    block = attn1 + 6 * d + _mix_ffn(d, hidden, 3)
    if cfg["cross_attention_dim"] is not None:
        kv_in = int(cfg["cross_attention_dim"])
        block += (_linear(d, d_cross) + 2 * _linear(kv_in, d_cross) + (2 * d_cross if qk_norm else 0)
                  + _linear(d_cross, d) + (2 * d if cfg["norm_elementwise_affine"] else 0))
    out_channels = int(cfg["out_channels"] or cfg["in_channels"])
    time = _linear(256, d) + _linear(d, d) + _linear(d, 6 * d)  # AdaLayerNormSingle
    if cfg["guidance_embeds"]:  # a second timestep MLP for the guidance scale
        time += _linear(256, d) + _linear(d, d)
    rest = (int(cfg["in_channels"]) * d * p + d + time + _linear(int(cfg["caption_channels"]), d) + _linear(d, d)
            + d + 2 * d + _linear(d, p * out_channels))
    blocks = int(cfg["num_layers"])
    return DitCount(rest + blocks * block, block, blocks, d, patch, float(cfg["mlp_ratio"]))


def _world_count(cfg: dict) -> DitCount:
    d = int(cfg["hidden_size"])
    heads = d // int(cfg["linear_head_dim"])
    hidden = int(d * float(cfg["mlp_ratio"]))
    patch = tuple(int(p) for p in cfg["patch_size"])
    p = math.prod(patch)
    norms = 2 * d if cfg["qk_norm"] else 0
    # Both attention variants hold the same projections: fused qkv (no bias), proj, the GDN gates (beta, decay,
    # A_log, dt_bias), the output gate, the camera branch's q/k/v/out and its own q/k norms.
    attn = (3 * d * d + _linear(d, d) + norms + 2 * _linear(d, heads) + 2 * heads + _linear(d, d)
            + 4 * _linear(d, d) + norms)
    kernel = int(cfg["conv_kernel_size"])
    short_convs = (1 if cfg["k_conv_only"] else 3) * 2 * d * kernel if kernel > 0 else 0  # GDN blocks only
    cross = _linear(d, d) + _linear(d, 2 * d) + _linear(d, d) + (2 * d if cfg["cross_norm"] else 0)
    if cfg["ffn_type"] == "GLUMBConvTemp":
        ffn = _mix_ffn(d, hidden, int(cfg["t_kernel_size"]))
    elif cfg["ffn_type"] == "mlp":
        ffn = _linear(d, hidden) + _linear(hidden, d)
    else:
        ffn = 0
    every = int(cfg["softmax_every_n"])
    blocks = int(cfg["num_layers"])
    plucker_blocks = int(cfg["chunk_plucker_post_attn_blocks"])
    sizes = []
    for i in range(blocks):
        softmax = every > 0 and (i + 1) % every == 0
        plucker = cfg["use_chunk_plucker_post_attn"] and (plucker_blocks < 0 or i < plucker_blocks)
        sizes.append(attn + (0 if softmax else short_convs) + (_linear(d, d) if plucker else 0) + cross + ffn + 6 * d)
    in_channels = int(cfg["in_channels"])
    out_channels = in_channels * (2 if cfg["pred_sigma"] else 1)
    rest = (_linear(256, d) + _linear(d, d) + (d if cfg["y_norm"] else 0) + _linear(d, 6 * d)
            + in_channels * d * p + d  # x_embedder
            + _linear(int(cfg["caption_channels"]), d) + _linear(d, d)  # y_embedder
            + (int(cfg["chunk_plucker_channels"]) * d * p + d if cfg["use_chunk_plucker_post_attn"] else 0)
            + 3 * d * p + d  # raymap_embedder (held, unused by the forward)
            + _linear(d, p * out_channels) + 2 * d)  # final layer
    softmax_blocks = sum(1 for i in range(blocks) if every > 0 and (i + 1) % every == 0)
    return DitCount(rest + sum(sizes), max(sizes, default=0), blocks, d, patch, float(cfg["mlp_ratio"]),
                    softmax_blocks)


def _plain(config: dict) -> dict:
    """Config keys without diffusers' bookkeeping entries (`_class_name`, `_diffusers_version`, ...)."""
    return {k: v for k, v in config.items() if not k.startswith("_")}
