"""On a GPU: our DiT against diffusers' at the real SANA 1.6B configs, random weights, bf16."""

from __future__ import annotations

import pytest
import torch

from sana.registry import get_spec

pytestmark = pytest.mark.gpu


def _relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours.float() - ref.float()).norm() / ref.float().norm()).item()


@pytest.mark.parametrize("name,px", [("sana-1.6b", 1024), ("sana-1.6b-4k", 4096), ("sprint-1.6b", 1024)])
def test_real_config_bf16_matches_diffusers(name, px, tmp_path):
    from diffusers import SanaTransformer2DModel

    from sana.loading import load_transformer

    config = {k: v for k, v in get_spec(name).transformer.items() if not k.startswith("_")}
    torch.manual_seed(0)
    ref = SanaTransformer2DModel(**config).to("cuda", torch.bfloat16).eval()
    with torch.no_grad():  # diffusers zero-inits some layers: give every weight a value
        for p in ref.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.02)
    ref.save_pretrained(tmp_path / "transformer")
    ours = load_transformer(tmp_path, dtype=torch.bfloat16, device="cuda")

    batch, side = 2, px // 32
    gen = torch.Generator("cuda").manual_seed(1)
    x = torch.randn(batch, 32, side, side, device="cuda", generator=gen).bfloat16()
    text = torch.randn(batch, 300, 2304, device="cuda", generator=gen).bfloat16()
    mask = torch.ones(batch, 300, device="cuda", dtype=torch.long)
    mask[0, 40:] = 0
    t = torch.tensor([999.0, 500.0], device="cuda")
    guidance = torch.full((batch,), 0.45, device="cuda", dtype=torch.bfloat16) if config.get("guidance_embeds") else None
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask, guidance=guidance,
                       return_dict=False)[0]
        got = ours(x, text, t, text_mask=mask, guidance=guidance)
    err = _relative_error(got, expected)
    print(f"{name} {px}px batch {batch}: relative error {err:.2e}")
    assert torch.isfinite(got).all()
    assert err < 1e-2
