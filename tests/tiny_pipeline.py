"""Tiny random SANA pipelines in the real diffusers layout, built from diffusers' and transformers' own classes.

Every width differs from every other (self-attention, cross-attention, caption channels) and every weight is
re-drawn as non-zero noise, so a port that mixes up two dimensions or skips a zero-initialised layer cannot
match by accident.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sana.text import COMPLEX_HUMAN_INSTRUCTION
from tests.tiny_transformer import noise_all_parameters, transformer_config

VAE_LATENT_CHANNELS = 8  # the tiny transformers' in/out channels
TEXT_HIDDEN = 40  # their caption channels


def build_tokenizer(path: Path):
    """A small byte-fallback BPE in Gemma's format, trained on the instruction prefix and a few prompts."""
    from sana.tokenizer import train_gemma_style_bpe

    corpus = ["\n".join(COMPLEX_HUMAN_INSTRUCTION)] * 4 + [
        "a red circle on the left on a white background",
        "a large blue square at the top and a small green triangle at the bottom on a black background",
        "a photo of a cat sleeping on a sunny windowsill, highly detailed",
        "an astronaut riding a horse on the moon",
    ] * 8
    return train_gemma_style_bpe(corpus, path)


def build_components(path: Path, kind: str = "sana", seed: int = 0) -> dict:
    from diffusers import AutoencoderDC, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    tokenizer = build_tokenizer(path / "_tokenizer_build")
    transformer = SanaTransformer2DModel(**transformer_config(kind))
    noise_all_parameters(transformer, seed + 1)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=VAE_LATENT_CHANNELS, attention_head_dim=4,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(8, 16, 16), decoder_block_out_channels=(8, 16, 16),
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
        decoder_norm_types="rms_norm", decoder_act_fns="silu", upsample_block_type="interpolate",
        downsample_block_type="Conv", scaling_factor=0.41407,
    )
    noise_all_parameters(vae, seed + 2, scale=0.1)
    text_config = Gemma2Config(
        vocab_size=768, hidden_size=TEXT_HIDDEN, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
        sliding_window=64, pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    text_encoder = Gemma2Model(text_config)
    noise_all_parameters(text_encoder, seed + 3, scale=0.2)
    return dict(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(), transformer=transformer.eval())


def build_pipeline(path: Path, kind: str = "sana", seed: int = 0, pag_layer: int | None = None):
    """Build a tiny pipeline of `kind` (sana | sana1.5 | 4k | sprint), save it to `path`, return it."""
    from diffusers import DPMSolverMultistepScheduler, SanaPipeline, SanaSprintPipeline, SCMScheduler

    parts = build_components(path, kind, seed)
    if kind == "sprint":
        pipe = SanaSprintPipeline(scheduler=SCMScheduler(sigma_data=0.5), **parts)
    else:
        scheduler = DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_order=2, prediction_type="flow_prediction", use_flow_sigmas=True,
            flow_shift=3.0, final_sigmas_type="zero", lower_order_final=True, solver_type="midpoint",
        )
        pipe = SanaPipeline(scheduler=scheduler, **parts)
    pipe.save_pretrained(path)
    return pipe


def pag_pipeline_from(pipe, layer: int):
    from diffusers import SanaPAGPipeline

    return SanaPAGPipeline(
        tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, transformer=pipe.transformer,
        scheduler=pipe.scheduler, pag_applied_layers=[f"transformer_blocks.{layer}"],
    )
