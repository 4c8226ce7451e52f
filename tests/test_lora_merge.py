"""LoRA files written by diffusers merge into our weights and give what diffusers gives with them loaded."""

from __future__ import annotations

import pytest
import torch

from sana.errors import SanaError
from sana.loading import load_transformer
from tests.test_transformer_parity import build_reference, inputs, relative_error


def save_random_lora(ref, path, *, rank=4, alpha=8, targets=("to_q", "to_k", "to_v", "to_out.0"), seed=0):
    """A peft adapter on diffusers' transformer with non-zero B, saved the way SanaPipeline saves LoRAs."""
    from diffusers import SanaPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    ref.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    layers = get_peft_model_state_dict(ref)
    config = ref.peft_config["default"].to_dict()
    SanaPipeline.save_lora_weights(path, transformer_lora_layers=layers,
                                   transformer_lora_adapter_metadata=config)
    return path / "pytorch_lora_weights.safetensors"


@pytest.mark.parametrize("scale", [1.0, 0.6])
def test_merged_lora_matches_diffusers_adapter(scale, tmp_path):
    ref = build_reference("sana1.5", tmp_path / "transformer")
    lora = save_random_lora(ref, tmp_path / "lora")
    ref.set_adapters(["default"], weights=[scale])
    ours = load_transformer(tmp_path, loras=[(lora, scale)])
    plain = load_transformer(tmp_path)
    x, text, mask, t, _ = inputs(ref)
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask, return_dict=False)[0]
        got = ours(x, text, t, text_mask=mask)
        without = plain(x, text, t, text_mask=mask)
    assert relative_error(got, expected) < 1e-5
    assert relative_error(without, expected) > 1e-3  # the LoRA really changes the output


def test_lora_for_another_model_is_refused(tmp_path):
    ref = build_reference("sana", tmp_path / "transformer")
    lora = save_random_lora(ref, tmp_path / "lora", targets=("to_q",))
    other = build_reference("sana", tmp_path / "other" / "transformer")
    from safetensors.torch import load_file, save_file

    state = load_file(lora)
    save_file({k.replace("transformer_blocks.0.", "transformer_blocks.9."): v for k, v in state.items()}, lora)
    with pytest.raises(SanaError, match="not in this model"):
        load_transformer(tmp_path / "other", loras=[(lora, 1.0)])
    assert other is not None


def test_damaged_lora_file(tmp_path):
    build_reference("sana", tmp_path / "transformer")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    with pytest.raises(SanaError, match="cannot read LoRA"):
        load_transformer(tmp_path, loras=[(bad, 1.0)])
