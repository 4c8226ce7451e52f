"""Our DiT against diffusers' SanaTransformer2DModel on the same (tiny, random) weights, fp32 on the CPU."""

from __future__ import annotations

import pytest
import torch

from sana.loading import load_transformer
from tests.tiny_pipeline import _noise_all_parameters, transformer_config

KINDS = ["sana", "sana1.5", "4k", "sprint"]


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).norm() / ref.norm()).item()


def build_reference(kind: str, path, seed: int = 0):
    from diffusers import SanaTransformer2DModel

    torch.manual_seed(seed)
    ref = SanaTransformer2DModel(**transformer_config(kind)).eval()
    _noise_all_parameters(ref, seed + 1)
    ref.save_pretrained(path)
    return ref


def inputs(ref, batch: int = 2, height: int = 8, width: int = 12, seed: int = 0):
    cfg = ref.config
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, height, width, generator=gen)
    text = torch.randn(batch, 7, cfg.caption_channels, generator=gen)
    mask = torch.ones(batch, 7, dtype=torch.long)
    mask[0, 3:] = 0  # padding in the first row
    t = torch.rand(batch, generator=gen) * 1000
    guidance = torch.full((batch,), 0.45) if cfg.guidance_embeds else None
    return x, text, mask, t, guidance


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [(8, 8), (8, 12), (5, 7)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_diffusers(kind, size, tmp_path):
    ref = build_reference(kind, tmp_path / "transformer")
    ours = load_transformer(tmp_path)
    x, text, mask, t, guidance = inputs(ref, height=size[0], width=size[1])
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask, guidance=guidance,
                       return_dict=False)[0]
        got = ours(x, text, t, text_mask=mask, guidance=guidance)
    assert got.shape == expected.shape
    assert relative_error(got, expected) < 1e-5


def test_pag_rows_match_diffusers_pag_processor(tmp_path):
    from diffusers.models.attention_processor import PAGCFGSanaLinearAttnProcessor2_0

    ref = build_reference("sana", tmp_path / "transformer")
    ours = load_transformer(tmp_path)
    x, text, mask, t, _ = inputs(ref, batch=3)
    ref.transformer_blocks[1].attn1.set_processor(PAGCFGSanaLinearAttnProcessor2_0())
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask, return_dict=False)[0]
        got = ours(x, text, t, text_mask=mask, perturbed_rows=1, perturbed_layers=(1,))
        plain = ours(x, text, t, text_mask=mask)
    assert relative_error(got, expected) < 1e-5
    assert relative_error(got[2:], plain[2:]) > 1e-3  # the perturbed row really changed
    assert relative_error(got[:2], plain[:2]) < 1e-6  # the others did not


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_matches_diffusers_in_the_same_precision(dtype, tmp_path):
    ref = build_reference("sana1.5", tmp_path / "transformer")
    ours = load_transformer(tmp_path, dtype=dtype)
    x, text, mask, t, _ = inputs(ref)
    ref = ref.to(dtype)
    with torch.no_grad():
        expected = ref(x.to(dtype), encoder_hidden_states=text.to(dtype), timestep=t, encoder_attention_mask=mask,
                       return_dict=False)[0].float()
        got = ours(x.to(dtype), text.to(dtype), t, text_mask=mask).float()
    assert relative_error(got, expected) < 2e-2
