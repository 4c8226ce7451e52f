"""Tiny random SANA transformers built with diffusers' own `SanaTransformer2DModel` and saved with `save_pretrained`.

Every width differs from every other (self-attention 4 x 8 = 32, cross-attention 2 x 12 = 24, caption
channels 40, latent channels 8 in and 8 or 6 out) and every parameter is re-drawn as non-zero noise (diffusers
zero-initialises some layers), so a port that swaps two dimensions or skips a layer cannot match by accident.
"""

from __future__ import annotations

from pathlib import Path

import torch

KINDS = ("sana", "sana1.5", "4k", "sprint", "options")
SAMPLE_SIZE = 8  # latent side the model is configured for


def transformer_config(kind: str = "sana") -> dict:
    """diffusers kwargs for a tiny model of `kind`.

    sana: SANA 1.0. sana1.5: q/k RMSNorm across heads. 4k: fixed sin-cos position embedding with interpolation
    scale 2 at a small sample size. sprint: guidance embedding and q/k norm. options: the config switches no
    released model uses (patch 2, biased q/k/v, affine FFN norm, fewer output channels).
    """
    cfg = dict(
        in_channels=8, out_channels=8,
        num_attention_heads=4, attention_head_dim=8,  # self-attention width 32
        num_layers=3,
        num_cross_attention_heads=2, cross_attention_head_dim=12,  # cross-attention width 24
        cross_attention_dim=32, caption_channels=40,
        mlp_ratio=2.5, sample_size=SAMPLE_SIZE, patch_size=1,
    )
    if kind == "sana1.5":
        cfg.update(qk_norm="rms_norm_across_heads")
    elif kind == "4k":
        cfg.update(interpolation_scale=2.0)
    elif kind == "sprint":
        cfg.update(qk_norm="rms_norm_across_heads", guidance_embeds=True)
    elif kind == "options":
        cfg.update(patch_size=2, out_channels=6, attention_bias=True, norm_elementwise_affine=True, mlp_ratio=2.0)
    elif kind != "sana":
        raise ValueError(kind)
    return cfg


def noise_all_parameters(module: torch.nn.Module, seed: int, scale: float = 0.2) -> None:
    """Re-draw every parameter: norm weights near 1, everything else N(0, scale^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=gen))


def build_reference(kind: str, path: Path | None = None, seed: int = 0):
    """A noised diffusers `SanaTransformer2DModel` of `kind` in eval mode, saved to `path` when given."""
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(seed)
    ref = SanaTransformer2DModel(**transformer_config(kind)).eval()
    noise_all_parameters(ref, seed + 1)
    if path is not None:
        ref.save_pretrained(path)
    return ref


def inputs(ref, batch: int = 2, height: int = 8, width: int = 12, seed: int = 0, text_len: int = 7):
    """(x [B, C, H, W], text [B, L, C_text], mask [B, L] with padding in row 0, timestep [B], guidance [B] or None)."""
    cfg = ref.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, height, width, generator=gen)
    text = torch.randn(batch, text_len, cfg.caption_channels, generator=gen)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[0, 3:] = 0
    t = torch.rand(batch, generator=gen) * 1000
    guidance = torch.rand(batch, generator=gen) * 0.6 if cfg.guidance_embeds else None
    return x, text, mask, t, guidance


def reference_output(ref, x, text, mask, t, guidance=None) -> torch.Tensor:
    with torch.no_grad():
        return ref(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask, guidance=guidance,
                   return_dict=False)[0]


def our_output(model, x, text, mask, t, guidance=None, **kwargs) -> torch.Tensor:
    dtype = model.dtype
    with torch.no_grad():
        return model(x.to(dtype), text.to(dtype), t, text_mask=mask, guidance=guidance, **kwargs)


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """||ours - ref|| / ||ref|| in fp32."""
    ours, ref = ours.float(), ref.float()
    return ((ours - ref).norm() / ref.norm()).item()
