"""The nano SANA-Video model's components and its diffusers-format directory.

Layout and classes are the real SANA-Video repos' (`SanaVideoPipeline`: Gemma-2 text encoder and tokenizer, Wan 2.1
`AutoencoderKLWan`, `SanaVideoTransformer3DModel`, DPM-Solver++ flow scheduler), so `sana video`, `sana finetune` and
diffusers load it unchanged. Only the sizes are nano:

- tokenizer and text encoder: the nano image model's (`sana/nano/model`), frozen, as SANA-Video keeps its Gemma-2;
- VAE: the Wan layout at widths 16-64 (`video_autoencoder`), 16 x 5 x 16 x 16 latents for 17 frames of 128 px;
- DiT: `SanaVideoTransformer3DModel` of the nano image DiT's width and depth (192 = 6 heads of 32, 8 layers,
  Mix-FFN ratio 2.5) with the real model's layout: patches (1, 2, 2), so a clip is 5 x 8 x 8 = 320 tokens of 16 x 16
  px each (the image nano model's 16 px a token), 3D RoPE (head dim 32: 12 for time, 10 + 10 for rows and
  columns), RMSNorm of q and k across heads, the temporal (3, 1) conv in every Mix-FFN. SANA-Video has no absolute
  position embedding; "at the top" comes from the depthwise convs' zero padding, which reaches the whole 8 x 8 grid
  within the eight blocks.
- scheduler: flow DPM-Solver++ at shift 3, the nano image model's (its latents hold 5 x 16 x 16 values a channel
  against 16 x 16 there, mostly repeated along time).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import SanaError
from .build import (TEXT_HIDDEN, NanoBuild, _drop_source_paths, build_scheduler, count_parameters, directory_sizes,
                    load_text_components, measure_build, resolve_transformer)
from .moving_shapes import SIDE
from .video_autoencoder import Z_DIM

FLOW_SHIFT = 3.0
SIZE_BUDGET = 25_000_000  # bytes on disk, the whole directory
COMPONENTS = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")


def video_transformer_config() -> dict:
    """`SanaVideoTransformer3DModel` kwargs of the nano video DiT (~5.9 M parameters)."""
    heads, head_dim = 6, 32
    return dict(
        in_channels=Z_DIM, out_channels=Z_DIM, num_attention_heads=heads, attention_head_dim=head_dim, num_layers=8,
        num_cross_attention_heads=heads, cross_attention_head_dim=head_dim, cross_attention_dim=heads * head_dim,
        caption_channels=TEXT_HIDDEN, mlp_ratio=2.5, dropout=0.0, attention_bias=False,
        sample_size=SIDE // 8 // 2,  # tokens along a side: 128 px / 8 (Wan) / 2 (patch)
        patch_size=(1, 2, 2), norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=None,
        guidance_embeds=False, qk_norm="rms_norm_across_heads", rope_max_seq_len=1024,
    )


def build_video_transformer(seed: int = 0):
    """The nano video DiT with our training initialisation (seeded), as diffusers' class."""
    from diffusers import SanaVideoTransformer3DModel

    from ..loading import video_engine_to_diffusers
    from ..models.video_transformer import SanaVideoTransformer, VideoTransformerConfig

    config = video_transformer_config()
    ours = SanaVideoTransformer(VideoTransformerConfig.from_dict(config))
    ours.initialize_weights(torch.Generator().manual_seed(seed))
    model = SanaVideoTransformer3DModel(**config)
    model.load_state_dict(video_engine_to_diffusers(ours.state_dict(), guidance_embeds=False))
    return model.eval()


def load_video_transformer_weights(path: Path):
    """The nano video DiT with the weights at `path` (a model or transformer folder, or a safetensors file, e.g. a
    `sana finetune` export), read through the engine's loader and checked against the nano config."""
    from diffusers import SanaVideoTransformer3DModel

    from ..loading import load_transformer, video_engine_to_diffusers

    config = video_transformer_config()
    engine = load_transformer(Path(path), dtype=torch.float32,
                              config={"_class_name": "SanaVideoTransformer3DModel", **config})
    model = SanaVideoTransformer3DModel(**config)
    missing, unexpected = model.load_state_dict(video_engine_to_diffusers(engine.state_dict(), False), strict=False)
    if missing or unexpected:
        raise SanaError(f"{path} does not fit the nano video transformer config",
                        f"missing {missing[:3]}, unexpected {unexpected[:3]}")
    return model.eval()


def video_scheduler(flow_shift: float = FLOW_SHIFT):
    return build_scheduler(flow_shift)


@dataclass
class NanoVideoBuild(NanoBuild):
    """The written nano video model: its folder, bytes per component and parameters per module."""


def write_nano_video_model(out_dir: Path, vae, text_from: Path, *, transformer=None, seed: int = 0,
                           flow_shift: float = FLOW_SHIFT, dtype: torch.dtype = torch.float16,
                           check_budget: bool = True) -> NanoVideoBuild:
    """Write the complete nano video model to `out_dir` in diffusers' layout, weights in `dtype`.

    `vae` is a trained `AutoencoderKLWan` or its folder; `text_from` a nano model folder whose tokenizer and text
    encoder are copied; `transformer` a `SanaVideoTransformer3DModel`, a weights path (see
    `load_video_transformer_weights`) or None for a seeded fresh DiT (the `--init random` starting point).
    """
    from diffusers import AutoencoderKLWan, SanaVideoPipeline

    # 1. Components: check what was given, build or load the rest.
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise SanaError(f"{out_dir} is not empty", "choose a new folder for the nano video model")
    vae = copy.deepcopy(vae) if isinstance(vae, torch.nn.Module) else AutoencoderKLWan.from_pretrained(Path(vae))
    if vae.config.z_dim != Z_DIM or vae.config.scale_factor_spatial != 8 or vae.config.scale_factor_temporal != 4:
        raise SanaError(f"the VAE makes {vae.config.z_dim}-channel latents at {vae.config.scale_factor_spatial}x / "
                        f"{vae.config.scale_factor_temporal}x, the nano video DiT takes {Z_DIM} at 8x / 4x",
                        "train one with `sana shapes train-vae --video`")
    transformer = resolve_transformer(transformer, lambda: build_video_transformer(seed),
                                      load_video_transformer_weights)
    tokenizer, text_encoder = load_text_components(Path(text_from))
    if text_encoder.config.hidden_size != TEXT_HIDDEN:
        raise SanaError(f"{text_from}'s text encoder gives {text_encoder.config.hidden_size} channels, the nano video "
                        f"DiT reads {TEXT_HIDDEN}", "copy them from the nano image model")

    # 2. Save as one SanaVideoPipeline, so model_index.json names the classes diffusers expects.
    pipe = SanaVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae.eval(),
                             transformer=transformer.eval(), scheduler=video_scheduler(flow_shift))
    pipe.to(dtype)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    _drop_source_paths(out_dir)
    for path in out_dir.rglob("*.safetensors"):
        path.chmod(0o644)  # written as private temporary files; a shipped model is read by every user

    # 3. Sizes against the budget.
    build = NanoVideoBuild(out_dir, directory_sizes(out_dir), count_parameters(transformer, text_encoder, vae))
    return measure_build(build, "nano video model", SIZE_BUDGET if check_budget else None)
