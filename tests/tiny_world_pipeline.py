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
from tests.tiny_video_pipeline import build_vae
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
