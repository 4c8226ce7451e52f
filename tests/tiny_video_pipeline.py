"""Tiny random SANA-Video pipelines in the real diffusers layout, built from diffusers' and transformers' classes.

Two VAEs: Wan 2.1 (the 480p models: 8x spatial, 4x temporal, patch (1, 2, 2)) and LTX-2 (the 720p models: 32x
spatial, 8x temporal, patch 1). Every weight is re-drawn as non-zero noise, and the LTX-2 latent statistics
(buffers) are random, so a port that skips a zero-initialised layer or the normalisation cannot match by
accident. The DiT's sample_size is neither 30 nor 22, so neither side bins the tiny sizes.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_pipeline import build_tokenizer
from tests.tiny_transformer import noise_all_parameters
from tests.tiny_video import video_config

VAES = ("wan", "ltx2")
TEXT_HIDDEN = 40
LATENT_CHANNELS = {"wan": 16, "ltx2": 8}
SAMPLE_SIZE = 8  # no resolution bins (diffusers bins only 30 and 22)


def build_vae(kind: str, seed: int):
    from diffusers import AutoencoderKLLTX2Video, AutoencoderKLWan

    torch.manual_seed(seed)
    if kind == "wan":
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        # 0.4: smaller weights shrink this narrow decoder's output until the latents barely move it
        noise_all_parameters(vae, seed + 1, scale=0.4)
        return vae.eval()
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS["ltx2"], block_out_channels=(8, 8, 8),
        decoder_block_out_channels=(8, 16, 32), layers_per_block=(1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1), spatio_temporal_scaling=(True,) * 3,
        decoder_spatio_temporal_scaling=(True,) * 3, decoder_inject_noise=(False,) * 4,
        downsample_type=("spatiotemporal",) * 3, upsample_type=("spatiotemporal",) * 3,
        upsample_residual=(True,) * 3, upsample_factor=(2, 2, 2), timestep_conditioning=False, encoder_causal=True,
        decoder_causal=False, patch_size=4, patch_size_t=1, scaling_factor=1.0, spatial_compression_ratio=32,
        temporal_compression_ratio=8,
    )
    noise_all_parameters(vae, seed + 1, scale=0.1)
    gen = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        vae.latents_mean.copy_(0.1 * torch.randn(vae.latents_mean.shape, generator=gen))
        vae.latents_std.copy_(1.0 + 0.5 * torch.rand(vae.latents_std.shape, generator=gen))
    return vae.eval()


def build_components(path: Path, vae_kind: str = "wan", seed: int = 0, learned_sigma: bool = False,
                     tokenizer=None) -> dict:
    """tokenizer, text_encoder, vae and transformer of a tiny pipeline with the `vae_kind` VAE (`tokenizer`:
    reuse one already built; training one takes a few seconds)."""
    from diffusers import SanaVideoTransformer3DModel
    from transformers import Gemma2Config, Gemma2Model

    channels = LATENT_CHANNELS[vae_kind]
    config = video_config("wan" if vae_kind == "wan" else "ltx2")
    config.update(in_channels=channels, out_channels=2 * channels if learned_sigma else channels,
                  caption_channels=TEXT_HIDDEN, sample_size=SAMPLE_SIZE)
    torch.manual_seed(seed)
    transformer = SanaVideoTransformer3DModel(**config)
    noise_all_parameters(transformer, seed + 1)
    text_encoder = Gemma2Model(Gemma2Config(
        vocab_size=768, hidden_size=TEXT_HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=1024, sliding_window=64, pad_token_id=0,
        bos_token_id=2, eos_token_id=1,
    ))
    noise_all_parameters(text_encoder, seed + 3, scale=0.2)
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(path / "_tokenizer_build")
    return dict(tokenizer=tokenizer, text_encoder=text_encoder.eval(),
                vae=build_vae(vae_kind, seed + 4), transformer=transformer.eval())


def text_to_video_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint", prediction_type="flow_prediction",
        use_flow_sigmas=True, flow_shift=8.0, final_sigmas_type="zero", lower_order_final=True,
    )


def build_pipeline(path: Path, vae_kind: str = "wan", seed: int = 0, learned_sigma: bool = False, tokenizer=None):
    """A tiny `SanaVideoPipeline` (flow DPM-Solver++, shift 8, as released), saved to `path` before it runs."""
    from diffusers import SanaVideoPipeline

    pipe = SanaVideoPipeline(scheduler=text_to_video_scheduler(),
                             **build_components(path, vae_kind, seed, learned_sigma, tokenizer))
    pipe.save_pretrained(path)
    return pipe


def image_to_video_from(pipe):
    """diffusers' `SanaImageToVideoPipeline` on the same components, with flow Euler at shift 8."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaImageToVideoPipeline

    parts = {k: v for k, v in pipe.components.items() if k != "scheduler"}
    return SanaImageToVideoPipeline(scheduler=FlowMatchEulerDiscreteScheduler(shift=8.0), **parts)


def first_frame(width: int, height: int, seed: int = 0):
    """A smooth RGB test image (gradients and a disc) of width x height."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    disc = ((x - cx) ** 2 + (y - cy) ** 2) < (0.25 * min(width, height)) ** 2
    rgb = np.stack([x / width, y / height, disc.astype(np.float32)], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))
