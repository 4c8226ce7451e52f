"""LoRA files written by diffusers merge into our weights and give what diffusers gives with them loaded."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sana.errors import SanaError
from sana.loading import load_transformer
from tests.test_loading import nvlabs_state
from tests.tiny_transformer import build_reference, inputs, our_output, reference_output, relative_error

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def save_lora(ref, folder, *, rank=4, alpha=8, targets=ATTENTION, seed=0, metadata=True, name="default",
              **lora_kwargs):
    """Put a peft adapter with random non-zero A and B on diffusers' model and save it as SanaPipeline does."""
    from diffusers import SanaPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    ref.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False,
                               **lora_kwargs), adapter_name=name)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param_name, p in ref.named_parameters():
            if f"lora_A.{name}." in param_name or f"lora_B.{name}." in param_name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    layers = get_peft_model_state_dict(ref, adapter_name=name)
    extra = {"transformer_lora_adapter_metadata": ref.peft_config[name].to_dict()} if metadata else {}
    SanaPipeline.save_lora_weights(folder, transformer_lora_layers=layers, **extra)
    return folder / "pytorch_lora_weights.safetensors"


def diffusers_with_lora(kind, loras):
    """A fresh diffusers model (same weights as the saved one) with the LoRA files loaded as
    `SanaPipeline.load_lora_weights` loads them (state dict and adapter metadata, then the transformer's adapter)."""
    from diffusers import SanaPipeline

    ref = build_reference(kind)
    names = []
    for i, (path, _) in enumerate(loras):
        state, metadata = SanaPipeline.lora_state_dict(path, return_lora_metadata=True)
        ref.load_lora_adapter(state, prefix="transformer", metadata=metadata, adapter_name=f"a{i}")
        names.append(f"a{i}")
    ref.set_adapters(names, weights=[scale for _, scale in loras])
    return ref


@pytest.mark.parametrize("scale", [1.0, 0.6, -0.5])
def test_attention_lora_matches_diffusers(scale, tmp_path):
    ref = build_reference("sana1.5", tmp_path / "transformer")
    lora = save_lora(ref, tmp_path / "lora")
    ref.set_adapters(["default"], weights=[scale])
    args = inputs(ref)
    expected = reference_output(ref, *args)
    # The file read back by diffusers gives the same model as the in-memory adapter.
    assert relative_error(reference_output(diffusers_with_lora("sana1.5", [(lora, scale)]), *args), expected) < 1e-6
    got = our_output(load_transformer(tmp_path, loras=[(lora, scale)]), *args)
    without = our_output(load_transformer(tmp_path), *args)
    assert relative_error(got, expected) < 1e-5
    assert relative_error(without, expected) > 1e-3  # the LoRA really changes the output


def test_lora_on_every_kind_of_layer(tmp_path):
    """Cross-attention, 1x1 convs of the Mix-FFN, caption and timestep MLPs, output projection; Sprint model."""
    ref = build_reference("sprint", tmp_path / "transformer")
    targets = ("attn2.to_k", "attn2.to_v", "attn1.to_v", "conv_inverted", "conv_point", "linear_1", "proj_out",
               "time_embed.linear")
    lora = save_lora(ref, tmp_path / "lora", rank=3, alpha=5, targets=targets)
    ref.set_adapters(["default"], weights=[0.8])
    keys = load_file(lora)
    assert any("conv_inverted" in k for k in keys) and any("guidance_embedder" in k for k in keys)
    args = inputs(ref)
    got = our_output(load_transformer(tmp_path, loras=[(lora, 0.8)]), *args)
    assert relative_error(got, reference_output(ref, *args)) < 1e-5


def test_rank_and_alpha_patterns_and_rslora(tmp_path):
    ref = build_reference("sana", tmp_path / "transformer")
    lora = save_lora(ref, tmp_path / "lora", rank=4, alpha=8, rank_pattern={"to_k": 2}, alpha_pattern={"to_v": 3},
                     use_rslora=True)
    config = json.loads(safe_open(str(lora), "pt").metadata()["lora_adapter_metadata"])
    assert config["transformer.use_rslora"] and config["transformer.rank_pattern"] == {"to_k": 2}
    args = inputs(ref)
    got = our_output(load_transformer(tmp_path, loras=[(lora, 1.0)]), *args)
    assert relative_error(got, reference_output(ref, *args)) < 1e-5


def test_without_metadata_alpha_is_rank(tmp_path):
    ref = build_reference("sana", tmp_path / "transformer")
    lora = save_lora(ref, tmp_path / "lora", rank=4, alpha=4, metadata=False)
    assert "lora_adapter_metadata" not in (safe_open(str(lora), "pt").metadata() or {})
    args = inputs(ref)
    expected = reference_output(diffusers_with_lora("sana", [(lora, 1.0)]), *args)
    assert relative_error(reference_output(ref, *args), expected) < 1e-6
    assert relative_error(our_output(load_transformer(tmp_path, loras=[(tmp_path / "lora", 1.0)]), *args),
                          expected) < 1e-5  # a folder works too


def test_two_loras_and_peft_prefix(tmp_path):
    ref = build_reference("sana1.5", tmp_path / "transformer")
    first = save_lora(ref, tmp_path / "one", seed=1, name="one")
    second = save_lora(ref, tmp_path / "two", rank=2, alpha=2, targets=("to_v", "conv_point"), seed=2, name="two",
                       metadata=False)
    # peft's own naming for the second file: base_model.model.<module>.lora_A.weight
    save_file({k.replace("transformer.", "base_model.model.", 1): v for k, v in load_file(second).items()}, second)
    ref.set_adapters(["one", "two"], weights=[0.7, 1.3])
    args = inputs(ref)
    got = our_output(load_transformer(tmp_path, loras=[(first, 0.7), (second, 1.3)]), *args)
    assert relative_error(got, reference_output(ref, *args)) < 1e-5


def test_lora_on_an_nvlabs_checkpoint(tmp_path):
    ref = build_reference("sana1.5", tmp_path / "transformer")
    pth = tmp_path / "model.pth"
    torch.save({"state_dict": nvlabs_state(ref.state_dict(), 3, sprint=False)}, pth)
    lora = save_lora(ref, tmp_path / "lora")
    config = json.loads((tmp_path / "transformer" / "config.json").read_text())
    args = inputs(ref)
    got = our_output(load_transformer(pth, config=config, loras=[(lora, 1.0)]), *args)
    assert relative_error(got, reference_output(ref, *args)) < 1e-5


def test_lora_in_half_precision(tmp_path):
    ref = build_reference("sana", tmp_path / "transformer")
    lora = save_lora(ref, tmp_path / "lora")
    args = inputs(ref)
    expected = reference_output(ref, *args)
    got = our_output(load_transformer(tmp_path, dtype=torch.bfloat16, loras=[(lora, 1.0)]), *args)
    plain = our_output(load_transformer(tmp_path, dtype=torch.bfloat16), *args)
    assert relative_error(got, expected) < 5e-2  # bf16 rounding of weights and activations
    assert relative_error(got, expected) < 0.5 * relative_error(plain, expected)


# -- bad input ----------------------------------------------------------------------------------------------

def _error(match, *args, **kwargs):
    with pytest.raises(SanaError, match=match) as info:
        load_transformer(*args, **kwargs)
    assert "\n" not in str(info.value)


def test_lora_for_another_model(tmp_path):
    ref = build_reference("sana", tmp_path / "transformer")
    lora = save_lora(ref, tmp_path / "lora", targets=("to_q",))
    state = load_file(lora)
    save_file({k.replace("transformer_blocks.0.", "transformer_blocks.9."): v for k, v in state.items()}, lora)
    _error("LoRA target 'transformer_blocks.9.attn1.to_q' is not in this model", tmp_path, loras=[(lora, 1.0)])
    wide = tmp_path / "wide.safetensors"
    save_file({"transformer.proj_out.lora_A.weight": torch.ones(2, 32),
               "transformer.proj_out.lora_B.weight": torch.ones(5, 2)}, wide)
    _error(r"'proj_out' has shape \(5, 32\), the model's weight is \(8, 32\)", tmp_path, loras=[(wide, 1.0)])
    unknown = tmp_path / "unknown.safetensors"
    save_file({"transformer.proj_out.hada_w1_a": torch.ones(2)}, unknown)
    _error("unexpected tensor 'transformer.proj_out.hada_w1_a'", tmp_path, loras=[(unknown, 1.0)])


def test_damaged_missing_and_dora_files(tmp_path):
    ref = build_reference("sana", tmp_path / "transformer")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    _error("cannot read LoRA file bad.safetensors", tmp_path, loras=[(bad, 1.0)])
    _error("LoRA file not found", tmp_path, loras=[(tmp_path / "nope.safetensors", 1.0)])
    half = tmp_path / "half.safetensors"
    save_file({"transformer.proj_out.lora_A.weight": torch.ones(2, 32)}, half)
    _error("'proj_out' lacks its lora_A or lora_B", tmp_path, loras=[(half, 1.0)])
    dora = save_lora(ref, tmp_path / "dora", targets=("to_q",), use_dora=True)
    _error("DoRA", tmp_path, loras=[(dora, 1.0)])


def test_a_lora_trained_on_a_video_model_is_refused_by_an_image_model(tmp_path):
    """Our LoRAs say which transformer class they were trained on (image and video LoRAs can share every name and
    shape); another kind is refused, the same kind and a LoRA that says nothing (other tools') merge."""
    from sana.errors import UsageError
    from sana.lora import BASE_CLASS_METADATA_KEY
    from sana.training.adapters import _add_metadata, _diffusers_class_name
    from sana.models import SanaTransformer

    ref = build_reference("sana", tmp_path / "transformer")
    lora = save_lora(ref, tmp_path / "lora", targets=("to_q",))
    load_transformer(tmp_path, loras=[(lora, 1.0)])  # says nothing: merged
    _add_metadata(lora, {BASE_CLASS_METADATA_KEY: "SanaVideoTransformer3DModel"})
    with pytest.raises(UsageError, match=r"trained on a video model \(SanaVideoTransformer3DModel\); this model is "
                                         r"an image one .*sana video"):
        load_transformer(tmp_path, loras=[(lora, 1.0)])
    _add_metadata(lora, {BASE_CLASS_METADATA_KEY: "SanaTransformer2DModel"})
    load_transformer(tmp_path, loras=[(lora, 1.0)])
    assert _diffusers_class_name(load_transformer(tmp_path)) == "SanaTransformer2DModel"
    assert isinstance(load_transformer(tmp_path), SanaTransformer)


def test_a_trained_loras_file_does_not_depend_on_the_processs_hash_seed(tmp_path):
    """peft keeps the target modules in a set, whose order follows PYTHONHASHSEED: written as it came, two runs
    identical to the last bit exported files that differed in their metadata."""
    from sana.models.transformer import SanaTransformer, TransformerConfig
    from sana.training.adapters import add_lora
    from sana.training.adapters import save_lora as save_trained_lora
    from tests.tiny_transformer import transformer_config

    model = SanaTransformer(TransformerConfig.from_dict(transformer_config("sana")))
    config = add_lora(model, rank=2, alpha=2, targets=["to_q", "to_k", "to_v", "to_out.0", "conv_inverted",
                                                        "conv_point", "linear_1", "linear_2"])
    path = save_trained_lora(model, config, tmp_path / "lora")
    with safe_open(path, "pt") as f:
        adapter = json.loads(f.metadata()["lora_adapter_metadata"])
    modules = adapter["transformer.target_modules"]  # diffusers prefixes every key with the component
    assert isinstance(modules, list) and len(modules) > 20 and modules == sorted(modules)
