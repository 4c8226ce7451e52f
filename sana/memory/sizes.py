"""The components' sizes and the workload: what the planner knows before anything loads.

Sizes come from safetensors headers and configs (`sizes_from_directory`), the registry preset when no weights
are present (`sizes_from_spec`), or live modules (`sizes_of_modules`, `sizes_of_clip_modules`). Image models are
sized by building our DiT and DC-AE decoder on the meta device; video and world models are counted from their
configs (`families`), so planning them never imports their modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

from . import families

DIT_KINDS = ("image", "video", "world")
VAE_KINDS = ("dcae", "wan", "ltx2")


@dataclass(frozen=True)
class ComponentSizes:
    """Parameter counts and the shape figures the activation estimates need."""

    transformer_params: int
    block_params: int  # one DiT block (the largest, where blocks differ)
    blocks: int
    inner_dim: int  # DiT width
    text_encoder_params: int
    text_hidden: int  # Gemma-2 hidden size
    vae_decoder_params: int  # DC-AE: only the decoder (generating needs no more); video VAEs: the whole module
    vae_scale_factor: int  # pixels per latent along a side
    vae_decoder_width: int  # channels of the decoder's full-resolution stage (per output pixel)
    native_resolution: int  # px the model was trained at
    source: str  # "weights" | "registry" | "modules"
    dit_kind: str = "image"  # "image" | "video" | "world"
    vae_kind: str = "dcae"  # "dcae" | "wan" | "ltx2"
    vae_temporal_scale: int = 1  # pixel frames per latent frame after the first (Wan 4, LTX-2 8)
    latent_channels: int = 32
    patch: tuple[int, int, int] = (1, 1, 1)  # DiT patch in latents (frames, rows, columns): Wan models (1, 2, 2)
    mlp_ratio: float = 2.5
    softmax_blocks: int = 0  # world model: blocks with softmax attention over all tokens

    @property
    def is_clip(self) -> bool:
        return self.dit_kind != "image"


@dataclass(frozen=True)
class Workload:
    """What one generation asks of the device."""

    width: int  # px the DiT and the VAE run at (after aspect-ratio binning)
    height: int
    images: int = 1  # decoded one at a time (clips: videos)
    rows: int = 2  # DiT batch: images x (1 + CFG + PAG)
    frames: int = 1  # pixel frames of a clip (1: an image)
    conditioned: bool = False  # a first frame is given (image-to-video, world model): the VAE encodes it first
    fps: float | None = None  # frames per second of the output (descriptions only)


# ---------------------------------------------------------------------------------------------------------
# Image models: our DiT and DC-AE decoder on the meta device
# ---------------------------------------------------------------------------------------------------------

def transformer_sizes(config: dict) -> tuple[int, int, int, int]:
    """(params, params of one block, blocks, width) of our DiT for a `config.json` dict, built on the meta device."""
    import torch

    from ..models.transformer import SanaTransformer, TransformerConfig

    cfg = TransformerConfig.from_dict(config)
    with torch.device("meta"):
        model = SanaTransformer(cfg)
    block = sum(p.numel() for p in model.blocks[0].parameters()) if cfg.num_layers else 0
    return sum(p.numel() for p in model.parameters()), block, cfg.num_layers, cfg.inner_dim


def with_fp8_blocks(sizes: ComponentSizes, config: dict) -> ComponentSizes:
    """`sizes` for a DiT whose block linears hold fp8 weights (`sana.models.fp8`; bf16 compute): the transformer's
    and a block's "params" become their bytes over 2, so the planner's bf16 arithmetic counts them right."""
    import torch

    from ..models.fp8 import quantize_blocks_fp8
    from ..models.transformer import SanaTransformer, TransformerConfig
    from ..models.video_transformer import SanaVideoTransformer, VideoTransformerConfig
    from ..models.world_transformer import SanaWorldTransformer, WorldTransformerConfig

    model_class, config_class = {"video": (SanaVideoTransformer, VideoTransformerConfig),
                                 "world": (SanaWorldTransformer, WorldTransformerConfig),
                                 }.get(families.dit_kind(config), (SanaTransformer, TransformerConfig))
    with torch.device("meta"):
        model = model_class(config_class.from_dict(config)).to(torch.bfloat16)
    quantize_blocks_fp8(model)

    def half_bytes(module) -> int:
        tensors = [*module.parameters(), *module.buffers()]
        return math.ceil(sum(t.numel() * t.element_size() for t in tensors) / 2)

    block = half_bytes(model.blocks[0]) if len(model.blocks) else 0
    return replace(sizes, transformer_params=half_bytes(model), block_params=block)


def vae_decoder_sizes(config: dict) -> tuple[int, int, int]:
    """(decoder params, scale factor, full-resolution channels) of a DC-AE config, from our decoder built on the
    meta device."""
    import torch

    from ..models.dcae import DCAEConfig, DCAEDecoder

    try:
        cfg = DCAEConfig.from_dict(config)
    except (TypeError, ValueError) as exc:
        from ..errors import SanaError

        raise SanaError(f"unsupported VAE config: {exc}") from None
    with torch.device("meta"):
        decoder = DCAEDecoder(cfg)
    params = sum(p.numel() for p in decoder.parameters())
    return params, cfg.spatial_compression_ratio, int(cfg.decoder_block_out_channels[0])


# ---------------------------------------------------------------------------------------------------------
# Video and world models: counted from configs
# ---------------------------------------------------------------------------------------------------------

def clip_sizes(transformer_config: dict, vae_config: dict, *, transformer_params: int | None = None,
               vae_params: int | None = None, text_encoder_params: int, text_hidden: int = 2304,
               native_resolution: int | None = None, source: str) -> ComponentSizes:
    """Sizes of a video or world model from its DiT and VAE configs (diffusers' keys). Counts given (from headers
    or a preset) replace the ones computed from the configs."""
    from ..errors import SanaError

    try:
        count = families.dit_count(transformer_config)
        geometry = families.vae_geometry(vae_config)
    except (TypeError, ValueError, KeyError) as exc:
        raise SanaError(f"unsupported video model config: {exc}") from None
    return ComponentSizes(
        transformer_params=transformer_params or count.params, block_params=count.block_params,
        blocks=count.blocks, inner_dim=count.inner_dim, text_encoder_params=text_encoder_params,
        text_hidden=text_hidden, vae_decoder_params=vae_params or families.VAE_PARAMS[geometry.kind],
        vae_scale_factor=geometry.spatial, vae_decoder_width=geometry.decoder_width,
        native_resolution=native_resolution or families.native_resolution(transformer_config), source=source,
        dit_kind=families.dit_kind(transformer_config), vae_kind=geometry.kind, vae_temporal_scale=geometry.temporal,
        latent_channels=geometry.latent_channels, patch=count.patch, mlp_ratio=count.mlp_ratio,
        softmax_blocks=count.softmax_blocks,
    )


# ---------------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------------

def sizes_from_spec(spec) -> ComponentSizes:
    """From a registry preset alone (no weights on disk). Image models pair Gemma-2-2B with DC-AE f32c32; video
    models the preset's VAE config, else the released Wan 2.1 or LTX-2 VAE by the DiT's latent channels."""
    from ..benchmarks.image import DCAE_F32C32, GEMMA2_2B

    config = {"_class_name": _preset_class(spec), **spec.transformer}
    kind = families.dit_kind(config)
    if kind != "image":
        vae = spec.extra.get("vae") or families.video_vae_for(config, kind)
        return clip_sizes(config, vae, transformer_params=int(spec.params["transformer"]),
                          vae_params=int(spec.params.get("vae", 0)) or None,
                          text_encoder_params=int(spec.params["text_encoder"]),
                          text_hidden=GEMMA2_2B["hidden_size"], native_resolution=spec.resolution, source="registry")
    params, block, blocks, width = transformer_sizes(spec.transformer)
    decoder, scale, channels = vae_decoder_sizes(DCAE_F32C32)
    return ComponentSizes(
        transformer_params=params, block_params=block, blocks=blocks, inner_dim=width,
        text_encoder_params=int(spec.params["text_encoder"]), text_hidden=GEMMA2_2B["hidden_size"],
        vae_decoder_params=decoder, vae_scale_factor=scale, vae_decoder_width=channels,
        native_resolution=spec.resolution, source="registry",
    )


def sizes_from_directory(model_dir: Path, *, transformer_config: dict | None = None) -> ComponentSizes:
    """From a diffusers-format folder: configs, and parameter counts from safetensors headers (no tensor is read)."""
    from ..components import read_json
    from ..hub import local_components

    own_path = model_dir / "transformer" / "config.json"
    own_config = read_json(own_path) if transformer_config is None or own_path.is_file() else None
    t_config = transformer_config or own_config
    vae_config = read_json(model_dir / "vae" / "config.json")
    text_config = read_json(model_dir / "text_encoder" / "config.json")
    found = {c.name: c for c in local_components(model_dir)}
    text = found.get("text_encoder")
    if text is not None and text.params is not None:
        text_params = text.params
    else:  # .bin weights only: assume half-precision storage
        text_params = (text.size_on_disk if text else 0) // 2
    text_hidden = int(text_config.get("hidden_size", 2304))
    if families.dit_kind(t_config) != "image" or families.vae_kind(vae_config) != "dcae":
        # Another DiT's config (a fine-tune's) does not describe the folder's weights: count from the config then.
        header = found.get("transformer")
        params = header.params if header is not None and t_config == own_config else None
        vae = found.get("vae")
        return clip_sizes(t_config, vae_config, transformer_params=params,
                          vae_params=vae.params if vae is not None else None, text_encoder_params=text_params,
                          text_hidden=text_hidden, source="weights")
    try:
        params, block, blocks, width = transformer_sizes(t_config)
    except (TypeError, ValueError) as exc:
        from ..errors import SanaError

        raise SanaError(f"unsupported transformer config: {exc}") from None
    decoder, scale, channels = vae_decoder_sizes(vae_config)
    return ComponentSizes(
        transformer_params=params, block_params=block, blocks=blocks, inner_dim=width,
        text_encoder_params=text_params, text_hidden=text_hidden,
        vae_decoder_params=decoder, vae_scale_factor=scale, vae_decoder_width=channels,
        native_resolution=int(t_config.get("sample_size", 32)) * scale, source="weights",
    )


def sizes_of_modules(transformer, text_model, vae) -> ComponentSizes:
    """From loaded modules (our DiT, the Gemma-2 model or None, our DC-AE decoder)."""
    cfg = transformer.config
    scale = vae.spatial_compression_ratio
    return ComponentSizes(
        transformer_params=sum(p.numel() for p in transformer.parameters()),
        block_params=sum(p.numel() for p in transformer.blocks[0].parameters()) if len(transformer.blocks) else 0,
        blocks=len(transformer.blocks), inner_dim=cfg.inner_dim,
        text_encoder_params=sum(p.numel() for p in text_model.parameters()) if text_model is not None else 0,
        text_hidden=int(getattr(getattr(text_model, "config", None), "hidden_size", 0)),
        vae_decoder_params=sum(p.numel() for p in vae.parameters()), vae_scale_factor=scale,
        vae_decoder_width=int(vae.config.decoder_block_out_channels[0]),
        native_resolution=cfg.sample_size * scale, source="modules",
    )


def sizes_of_clip_modules(transformer, text_model, vae, *, transformer_config: dict, vae_config: dict,
                          ) -> ComponentSizes:
    """From a loaded video/world pipeline's modules: their parameter counts, and the shape figures from the
    diffusers-style configs they were built from (any module type: nothing but `parameters()` is read)."""
    def count(module) -> int:
        return sum(p.numel() for p in module.parameters()) if module is not None else 0

    hidden = int(getattr(getattr(text_model, "config", None), "hidden_size", 2304))
    sizes = clip_sizes(transformer_config, vae_config, transformer_params=count(transformer),
                       vae_params=count(vae) or None, text_encoder_params=count(text_model), text_hidden=hidden,
                       source="modules")
    blocks = getattr(transformer, "blocks", None) or getattr(transformer, "transformer_blocks", None)
    if blocks is not None and len(blocks):
        sizes = replace(sizes, block_params=max(count(b) for b in blocks), blocks=len(blocks))
    return sizes


def _preset_class(spec) -> str:
    """A preset's DiT class: its config's `_class_name`, else by family (image presets carry none)."""
    name = spec.transformer.get("_class_name")
    if name:
        return name
    return {"video": "SanaVideoTransformer3DModel", "wm": "SanaWMTransformer3DModel"}.get(spec.family,
                                                                                        "SanaTransformer2DModel")
