"""The one loader: every layout reaches the same model, and bad files give one clear error."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from sana.errors import SanaError
from sana.loading import load_transformer
from tests.test_transformer_parity import build_reference, inputs, relative_error


def _outputs(model, ref):
    x, text, mask, t, guidance = inputs(ref)
    with torch.no_grad():
        expected = ref(x, encoder_hidden_states=text, timestep=t, encoder_attention_mask=mask, guidance=guidance,
                       return_dict=False)[0]
        got = model(x.to(model.dtype), text.to(model.dtype), t, text_mask=mask, guidance=guidance).float()
    return got, expected


# The NVlabs names, written independently of the loader (from the public conversion script's naming).
def to_original(state: dict, guidance: bool) -> dict:
    out = {}
    simple = [
        (r"patch_embed\.proj\.(.*)", r"x_embedder.proj.\1"),
        (r"caption_projection\.linear_1\.(.*)", r"y_embedder.y_proj.fc1.\1"),
        (r"caption_projection\.linear_2\.(.*)", r"y_embedder.y_proj.fc2.\1"),
        (r"time_embed\.(?:emb\.)?timestep_embedder\.linear_1\.(.*)", r"t_embedder.mlp.0.\1"),
        (r"time_embed\.(?:emb\.)?timestep_embedder\.linear_2\.(.*)", r"t_embedder.mlp.2.\1"),
        (r"time_embed\.guidance_embedder\.linear_1\.(.*)", r"cfg_embedder.mlp.0.\1"),
        (r"time_embed\.guidance_embedder\.linear_2\.(.*)", r"cfg_embedder.mlp.2.\1"),
        (r"time_embed\.linear\.(.*)", r"t_block.1.\1"),
        (r"caption_norm\.weight", r"attention_y_norm.weight"),
        (r"proj_out\.(.*)", r"final_layer.linear.\1"),
        (r"scale_shift_table", r"final_layer.scale_shift_table"),
        (r"transformer_blocks\.(\d+)\.scale_shift_table", r"blocks.\1.scale_shift_table"),
        (r"transformer_blocks\.(\d+)\.attn1\.norm_q\.(.*)", r"blocks.\1.attn.q_norm.\2"),
        (r"transformer_blocks\.(\d+)\.attn1\.norm_k\.(.*)", r"blocks.\1.attn.k_norm.\2"),
        (r"transformer_blocks\.(\d+)\.attn1\.to_out\.0\.(.*)", r"blocks.\1.attn.proj.\2"),
        (r"transformer_blocks\.(\d+)\.attn2\.to_q\.(.*)", r"blocks.\1.cross_attn.q_linear.\2"),
        (r"transformer_blocks\.(\d+)\.attn2\.norm_q\.(.*)", r"blocks.\1.cross_attn.q_norm.\2"),
        (r"transformer_blocks\.(\d+)\.attn2\.norm_k\.(.*)", r"blocks.\1.cross_attn.k_norm.\2"),
        (r"transformer_blocks\.(\d+)\.attn2\.to_out\.0\.(.*)", r"blocks.\1.cross_attn.proj.\2"),
        (r"transformer_blocks\.(\d+)\.ff\.conv_inverted\.(.*)", r"blocks.\1.mlp.inverted_conv.conv.\2"),
        (r"transformer_blocks\.(\d+)\.ff\.conv_depth\.(.*)", r"blocks.\1.mlp.depth_conv.conv.\2"),
        (r"transformer_blocks\.(\d+)\.ff\.conv_point\.(.*)", r"blocks.\1.mlp.point_conv.conv.\2"),
    ]
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"transformer_blocks\.(\d+)\.", k))})
    for i in blocks:
        p = f"transformer_blocks.{i}"
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([state.pop(f"{p}.attn1.to_{n}.weight") for n in "qkv"])
        out[f"blocks.{i}.cross_attn.kv_linear.weight"] = torch.cat([state.pop(f"{p}.attn2.to_{n}.weight") for n in "kv"])
        out[f"blocks.{i}.cross_attn.kv_linear.bias"] = torch.cat([state.pop(f"{p}.attn2.to_{n}.bias") for n in "kv"])
    for key, tensor in state.items():
        for pattern, replacement in simple:
            new, count = re.subn(f"^{pattern}$", replacement, key)
            if count:
                out[new] = tensor
                break
        else:
            raise AssertionError(f"unmapped diffusers key {key}")
    out["pos_embed"] = torch.zeros(1)  # originals carry tensors the model recomputes
    out["y_embedder.y_embedding"] = torch.zeros(1)
    return out


def test_sharded_folder(tmp_path):
    ref = build_reference("sana", tmp_path / "transformer")
    sharded = tmp_path / "sharded"
    ref.save_pretrained(sharded / "transformer", max_shard_size="40KB")
    assert len(list((sharded / "transformer").glob("*.safetensors"))) > 1
    model = load_transformer(sharded)
    assert len(model.load_report.files) > 1
    got, expected = _outputs(model, ref)
    assert relative_error(got, expected) < 1e-5


def test_fp16_variant_is_preferred_when_asked(tmp_path):
    ref = build_reference("sana1.5", tmp_path / "transformer")
    ref.to(torch.float16).save_pretrained(tmp_path / "transformer", variant="fp16")
    ref.float()
    model = load_transformer(tmp_path, variant="fp16")
    assert model.load_report.files == ["diffusion_pytorch_model.fp16.safetensors"]
    got, expected = _outputs(model, ref)
    assert relative_error(got, expected) < 1e-2  # fp16 weights, fp32 compute
    assert load_transformer(tmp_path).load_report.files == ["diffusion_pytorch_model.safetensors"]
    assert load_transformer(tmp_path, variant="bf16").load_report.files == ["diffusion_pytorch_model.safetensors"]


@pytest.mark.parametrize("kind", ["sana1.5", "sprint"])
def test_original_pth_and_single_file(kind, tmp_path):
    ref = build_reference(kind, tmp_path / "transformer")
    config = json.loads((tmp_path / "transformer" / "config.json").read_text())
    original = to_original(dict(ref.state_dict()), guidance=kind == "sprint")
    pth = tmp_path / "model.pth"
    torch.save({"state_dict": original, "step": 1000}, pth)
    single = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in original.items()}, single)
    for path in (pth, single):
        got, expected = _outputs(load_transformer(path, config=config), ref)
        assert relative_error(got, expected) < 1e-5, path.name


def test_single_file_needs_a_config(tmp_path):
    build_reference("sana", tmp_path / "transformer")
    with pytest.raises(SanaError, match="config"):
        load_transformer(tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")


def test_truncated_and_corrupt_safetensors(tmp_path):
    build_reference("sana", tmp_path / "transformer")
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(SanaError, match="corrupt or truncated"):
        load_transformer(tmp_path)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(SanaError, match="corrupt or truncated"):
        load_transformer(tmp_path)


def test_wrong_shapes_and_missing_weights(tmp_path):
    build_reference("sana", tmp_path / "transformer")
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["proj_out.weight"] = torch.zeros(3, 3)
    save_file(state, weights)
    with pytest.raises(SanaError, match=r"proj_out.weight.*\(3, 3\)"):
        load_transformer(tmp_path)
    del state["proj_out.weight"]
    save_file(state, weights)
    with pytest.raises(SanaError, match="lacks 1 weight"):
        load_transformer(tmp_path)


def test_unexpected_tensors_are_reported_not_fatal(tmp_path):
    build_reference("sana", tmp_path / "transformer")
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    state["extra.head.weight"] = torch.ones(2)
    save_file(state, weights)
    assert load_transformer(tmp_path).load_report.unexpected == ["extra.head.weight"]


@pytest.mark.parametrize("payload", ["not a dict", {"state_dict": {"a": "b"}}, {}], ids=["string", "non-tensor", "empty"])
def test_pth_that_is_not_a_plain_state_dict(payload, tmp_path):
    build_reference("sana", tmp_path / "transformer")
    config = json.loads((tmp_path / "transformer" / "config.json").read_text())
    path = tmp_path / "bad.pth"
    torch.save(payload, path)
    with pytest.raises(SanaError, match="not a plain state dict"):
        load_transformer(path, config=config)


class Arbitrary:
    pass


def test_pth_with_pickled_objects_is_refused(tmp_path):
    build_reference("sana", tmp_path / "transformer")
    config = json.loads((tmp_path / "transformer" / "config.json").read_text())
    path = tmp_path / "object.pth"
    torch.save({"state_dict": {"w": torch.ones(1)}, "obj": Arbitrary()}, path)
    with pytest.raises(SanaError, match="not a plain state dict"):
        load_transformer(path, config=config)
