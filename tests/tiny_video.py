"""Tiny random SANA-Video transformers built with diffusers' own `SanaVideoTransformer3DModel`, saved with
`save_pretrained`.

Every width differs from every other (self-attention 2 x 16 = 32 with 3D RoPE split 8/4/4, cross-attention
3 x 8 = 24, caption channels 20, FFN hidden 96, latent channels 16 in / 12 out for Wan-style patches (1, 2, 2)
and 8 in / 6 out for LTX-2-style patches (1, 1, 1)), and every parameter is re-drawn as non-zero noise
(diffusers zero-initialises some layers), so a port that swaps two dimensions or skips a layer cannot match by
accident.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_transformer import noise_all_parameters, relative_error

__all__ = ["KINDS", "build_reference", "inputs", "noise_all_parameters", "relative_error", "video_config"]

KINDS = ("wan", "ltx2")


def video_config(kind: str = "wan") -> dict:
    """diffusers kwargs for a tiny model. wan: the 480p layout (patch (1, 2, 2)); ltx2: the 720p layout (patch 1)."""
    cfg = dict(
        num_attention_heads=2, attention_head_dim=16,  # self-attention width 32
        num_layers=2,
        num_cross_attention_heads=3, cross_attention_head_dim=8,  # cross-attention width 24
        cross_attention_dim=32, caption_channels=20,
        mlp_ratio=3.0, attention_bias=False, norm_elementwise_affine=False, norm_eps=1e-6,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=64, guidance_embeds=False,
    )
    if kind == "wan":
        cfg.update(in_channels=16, out_channels=12, sample_size=30, patch_size=(1, 2, 2))
    elif kind == "ltx2":
        cfg.update(in_channels=8, out_channels=6, sample_size=22, patch_size=(1, 1, 1))
    else:
        raise ValueError(kind)
    return cfg


def build_reference(kind: str = "wan", path: Path | None = None, seed: int = 0, **overrides):
    """A noised diffusers `SanaVideoTransformer3DModel` of `kind` in eval mode, saved to `path` when given."""
    from diffusers import SanaVideoTransformer3DModel

    torch.manual_seed(seed)
    ref = SanaVideoTransformer3DModel(**{**video_config(kind), **overrides}).eval()
    noise_all_parameters(ref, seed + 1)
    if path is not None:
        ref.save_pretrained(path)
    return ref


def inputs(ref, batch: int = 2, frames: int = 3, height: int = 4, width: int = 6, seed: int = 0, text_len: int = 7):
    """(x [B, C, F, H, W], text [B, L, C_text], mask [B, L] with padding in row 0, timestep [B]); H, W in latent
    pixels."""
    cfg = ref.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, frames, height, width, generator=gen)
    text = torch.randn(batch, text_len, cfg.caption_channels, generator=gen)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[0, 3:] = 0
    t = torch.rand(batch, generator=gen) * 1000
    return x, text, mask, t


def first_frame_timesteps(ref, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """diffusers' image-to-video timesteps: [B, 1, F', H', W'], 0 on the first latent frame, t elsewhere."""
    pt, ph, pw = ref.config.patch_size
    b, _, f, h, w = x.shape
    mask = torch.zeros(b, 1, f // pt, h // ph, w // pw)
    mask[:, :, 0] = 1.0
    return t[:, None, None, None, None].expand(mask.shape) * (1 - mask)


def reference_output(ref, x, text, mask, t) -> torch.Tensor:
    with torch.no_grad():
        return ref(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask, return_dict=False)[0]


def our_output(model, x, text, mask, t) -> torch.Tensor:
    dtype = model.dtype
    with torch.no_grad():
        return model(x.to(dtype), text.to(dtype), t, text_mask=mask)
