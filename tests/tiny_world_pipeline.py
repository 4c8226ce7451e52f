"""A tiny random SANA-WM pipeline in the real diffusers layout, built from diffusers' and transformers' classes.

The reference's recipe: the tiny `SanaWMTransformer3DModel` of tests/tiny_world.py with every parameter re-drawn as
noise (its zero-initialised Plücker embedder and short convolutions included, so the camera paths cannot vanish),
the tiny LTX-2 VAE of tests/tiny_video_pipeline.py with random latent statistics, a tiny Gemma-2 encoder, the
tokenizer of tests/tiny_pipeline.py and `FlowMatchEulerDiscreteScheduler(shift=3.0)`. Saved before it ever runs
(a run changes the tokenizer's padding state, which saving would bake in).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.tiny_pipeline import build_tokenizer
from tests.tiny_transformer import noise_all_parameters
from tests.tiny_video_pipeline import LATENT_CHANNELS, build_vae
from tests.tiny_world import build_reference

TEXT_HIDDEN = 24  # Gemma-2 width = the DiT's caption channels
SHIFT = 3.0
WIDTH, HEIGHT = 96, 64  # a 3 x 2 latent grid (LTX-2: 32 px a latent)


def build_text_encoder(seed: int):
    from transformers import Gemma2Config, Gemma2Model

    torch.manual_seed(seed)
    model = Gemma2Model(Gemma2Config(
        vocab_size=768, hidden_size=TEXT_HIDDEN, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=12, max_position_embeddings=1024, sliding_window=64, pad_token_id=0,
        bos_token_id=2, eos_token_id=1,
    ))
    noise_all_parameters(model, seed + 1, scale=0.2)
    return model.eval()


def build_pipeline(path: Path, seed: int = 0, tokenizer=None):
    """A tiny diffusers `SanaWMPipeline`, saved to `path` (a model folder `sana world --model` takes)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaWMPipeline

    transformer = build_reference(seed=seed, caption_channels=TEXT_HIDDEN)
    pipe = SanaWMPipeline(
        tokenizer=tokenizer if tokenizer is not None else build_tokenizer(path / "_tokenizer_build"),
        text_encoder=build_text_encoder(seed + 10), vae=build_vae("ltx2", seed + 20), transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=SHIFT),
    )
    pipe.save_pretrained(path)
    return pipe


def build_refiner(path: Path, seed: int = 0, tokenizer=None):
    """A tiny diffusers `SanaWMLTX2Refiner` (SANA-WM's stage 2) for the tiny pipeline's latents, saved to `path`: a
    two-layer LTX-2 refiner DiT, one-layer text connectors and a two-layer Gemma-3 (its vision tower one layer), every
    parameter noise, the distilled schedule's `FlowMatchEulerDiscreteScheduler(shift=1.0)`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaWMLTX2Refiner
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    torch.manual_seed(seed)
    text_config = Gemma3TextConfig(vocab_size=768, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                   max_position_embeddings=1024, sliding_window=64, pad_token_id=0, bos_token_id=2,
                                   eos_token_id=1, attn_implementation="eager")
    vision_config = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14)
    text_encoder = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text_config, vision_config=vision_config,
                                                               mm_tokens_per_image=4))
    layers = text_config.num_hidden_layers + 1  # the connectors read every hidden state, the embeddings' too
    connectors = LTX2TextConnectors(
        caption_channels=16, text_proj_in_factor=layers, video_connector_num_attention_heads=2,
        video_connector_attention_head_dim=8, video_connector_num_layers=1, video_connector_num_learnable_registers=8,
        audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=8, audio_connector_num_layers=1,
        audio_connector_num_learnable_registers=8)
    channels = LATENT_CHANNELS["ltx2"]
    transformer = SanaWMLTX2RefinerTransformer3DModel(
        in_channels=channels, out_channels=channels, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=2, caption_channels=16, audio_in_channels=8, audio_out_channels=8,
        audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16)
    for offset, module in enumerate((text_encoder, connectors, transformer)):
        noise_all_parameters(module, seed + 100 + offset, scale=0.2)
    refiner = SanaWMLTX2Refiner(
        transformer=transformer.eval(), connectors=connectors.eval(), text_encoder=text_encoder.eval(),
        tokenizer=tokenizer if tokenizer is not None else build_tokenizer(path / "_tokenizer_build"),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), text_max_sequence_length=64)
    refiner.save_pretrained(path)
    return refiner
