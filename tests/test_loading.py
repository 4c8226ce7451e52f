"""The one loader: every layout reaches the same model as diffusers, and bad input gives one clear line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sana.errors import SanaError
from sana.loading import load_transformer
from tests.tiny_transformer import build_reference, inputs, our_output, reference_output, relative_error


def assert_matches(model, ref, tolerance=1e-5):
    args = inputs(ref)
    assert relative_error(our_output(model, *args), reference_output(ref, *args)) < tolerance


def raises_one_line(match, fn, *args, **kwargs) -> str:
    with pytest.raises(SanaError, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def config_of(folder) -> dict:
    return json.loads((folder / "config.json").read_text())


# NVlabs names for a diffusers state dict, written out from the public conversion script's naming
# (blocks.N.attn.qkv, cross_attn.q_linear / kv_linear / proj, mlp.*_conv.conv, t_embedder, t_block, y_embedder,
# attention_y_norm, x_embedder, final_layer, cfg_embedder), independently of the loader's own tables.
def nvlabs_state(diffusers: dict[str, torch.Tensor], num_layers: int, sprint: bool) -> dict[str, torch.Tensor]:
    d = dict(diffusers)
    out = {}
    time = "time_embed." if sprint else "time_embed.emb."
    for name, original in [
        ("patch_embed.proj", "x_embedder.proj"),
        ("caption_projection.linear_1", "y_embedder.y_proj.fc1"),
        ("caption_projection.linear_2", "y_embedder.y_proj.fc2"),
        (time + "timestep_embedder.linear_1", "t_embedder.mlp.0"),
        (time + "timestep_embedder.linear_2", "t_embedder.mlp.2"),
        ("time_embed.linear", "t_block.1"),
        ("proj_out", "final_layer.linear"),
    ] + ([("time_embed.guidance_embedder.linear_1", "cfg_embedder.mlp.0"),
          ("time_embed.guidance_embedder.linear_2", "cfg_embedder.mlp.2")] if sprint else []):
        out[f"{original}.weight"] = d.pop(f"{name}.weight")
        out[f"{original}.bias"] = d.pop(f"{name}.bias")
    out["attention_y_norm.weight"] = d.pop("caption_norm.weight")
    out["final_layer.scale_shift_table"] = d.pop("scale_shift_table")
    for i in range(num_layers):
        src, dst = f"transformer_blocks.{i}.", f"blocks.{i}."
        out[dst + "scale_shift_table"] = d.pop(src + "scale_shift_table")
        out[dst + "attn.qkv.weight"] = torch.cat([d.pop(src + f"attn1.to_{n}.weight") for n in "qkv"])
        out[dst + "attn.proj.weight"] = d.pop(src + "attn1.to_out.0.weight")
        out[dst + "attn.proj.bias"] = d.pop(src + "attn1.to_out.0.bias")
        out[dst + "cross_attn.q_linear.weight"] = d.pop(src + "attn2.to_q.weight")
        out[dst + "cross_attn.q_linear.bias"] = d.pop(src + "attn2.to_q.bias")
        out[dst + "cross_attn.kv_linear.weight"] = torch.cat([d.pop(src + f"attn2.to_{n}.weight") for n in "kv"])
        out[dst + "cross_attn.kv_linear.bias"] = torch.cat([d.pop(src + f"attn2.to_{n}.bias") for n in "kv"])
        out[dst + "cross_attn.proj.weight"] = d.pop(src + "attn2.to_out.0.weight")
        out[dst + "cross_attn.proj.bias"] = d.pop(src + "attn2.to_out.0.bias")
        for ours, theirs in [("attn1.norm_q", "attn.q_norm"), ("attn1.norm_k", "attn.k_norm"),
                             ("attn2.norm_q", "cross_attn.q_norm"), ("attn2.norm_k", "cross_attn.k_norm")]:
            if src + ours + ".weight" in d:
                out[dst + theirs + ".weight"] = d.pop(src + ours + ".weight")
        for ours, theirs in [("conv_inverted", "inverted_conv"), ("conv_depth", "depth_conv"),
                             ("conv_point", "point_conv")]:
            for kind in ("weight", "bias"):
                if f"{src}ff.{ours}.{kind}" in d:
                    out[f"{dst}mlp.{theirs}.conv.{kind}"] = d.pop(f"{src}ff.{ours}.{kind}")
    assert not d, f"unmapped: {sorted(d)}"
    # Tensors original checkpoints carry that the model recomputes or never uses.
    out["pos_embed"] = torch.zeros(1, 64, 32)
    out["y_embedder.y_embedding"] = torch.zeros(300, 40)
    return out


# -- diffusers folders ----------------------------------------------------------------------------------------

def test_model_folder_and_transformer_folder(tmp_path):
    ref = build_reference("sana", tmp_path / "transformer")
    (tmp_path / "model_index.json").write_text("{}")
    for path in (tmp_path, tmp_path / "transformer"):
        model = load_transformer(path)
        assert model.load_report.files == ["diffusion_pytorch_model.safetensors"]
        assert model.load_report.unexpected == []
        assert not any(p.is_meta for p in model.parameters())
        assert_matches(model, ref)


def test_sharded_folder(tmp_path):
    ref = build_reference("sana1.5")
    ref.save_pretrained(tmp_path / "transformer", max_shard_size="40KB")
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    model = load_transformer(tmp_path)
    assert len(model.load_report.files) > 1
    assert_matches(model, ref)
    first = sorted((tmp_path / "transformer").glob("*-of-*.safetensors"))[0]
    first.unlink()
    raises_one_line(f"missing shard.*{first.name}", load_transformer, tmp_path)


def test_fp16_variant_single_and_sharded(tmp_path):
    from diffusers import SanaTransformer2DModel

    ref = build_reference("sprint", tmp_path / "single" / "transformer")
    half = build_reference("sprint").to(torch.float16)
    half.save_pretrained(tmp_path / "single" / "transformer", variant="fp16")
    half.save_pretrained(tmp_path / "sharded" / "transformer", variant="fp16", max_shard_size="40KB")
    assert (tmp_path / "sharded" / "transformer" / "diffusion_pytorch_model.safetensors.index.fp16.json").is_file()
    # diffusers' own reading of the fp16 files, computed in fp32, is the reference for ours.
    expected_model = SanaTransformer2DModel.from_pretrained(tmp_path / "single" / "transformer", variant="fp16",
                                                            torch_dtype=torch.float32).eval()
    for folder in ("single", "sharded"):
        model = load_transformer(tmp_path / folder, variant="fp16")
        assert all(".fp16" in name for name in model.load_report.files)
        assert model.dtype == torch.float32
        assert_matches(model, expected_model)
        assert_matches(model, ref, tolerance=5e-3)  # fp16 rounding of the weights only
    assert load_transformer(tmp_path / "single").load_report.files == ["diffusion_pytorch_model.safetensors"]
    # No bf16 files: the plain ones are used.
    assert load_transformer(tmp_path / "single", variant="bf16").load_report.files == [
        "diffusion_pytorch_model.safetensors"]


def test_load_in_bf16(tmp_path):
    ref = build_reference("4k", tmp_path / "transformer")
    model = load_transformer(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert_matches(model, ref, tolerance=3e-2)


# -- NVlabs checkpoints and single files ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sana", "sana1.5", "4k", "sprint"])
@pytest.mark.parametrize("wrapper", ["state_dict", "model", "flat", "module."])
def test_nvlabs_pth(kind, wrapper, tmp_path):
    ref = build_reference(kind, tmp_path / "transformer")
    original = nvlabs_state(ref.state_dict(), ref.config.num_layers, sprint=kind == "sprint")
    if wrapper == "module.":
        payload = {f"module.{k}": v for k, v in original.items()}
    elif wrapper == "flat":
        payload = original
    else:
        payload = {wrapper: original, "step": 1000, "optimizer_note": "dropped"}
    path = tmp_path / "checkpoint.pth"
    torch.save(payload, path)
    model = load_transformer(path, config=config_of(tmp_path / "transformer"))
    assert model.load_report.unexpected == []
    assert_matches(model, ref)


def test_legacy_pth_format(tmp_path):
    ref = build_reference("sana", tmp_path / "transformer")
    path = tmp_path / "legacy.pth"
    torch.save({"state_dict": nvlabs_state(ref.state_dict(), 3, sprint=False)}, path,
               _use_new_zipfile_serialization=False)
    assert_matches(load_transformer(path, config=config_of(tmp_path / "transformer")), ref)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_single_file_safetensors_with_original_keys(prefix, tmp_path):
    ref = build_reference("sana1.5", tmp_path / "transformer")
    original = nvlabs_state(ref.state_dict(), 3, sprint=False)
    path = tmp_path / "sana.safetensors"
    save_file({prefix + k: v.contiguous() for k, v in original.items()}, path)
    assert_matches(load_transformer(path, config=config_of(tmp_path / "transformer")), ref)


def test_single_file_safetensors_with_diffusers_keys(tmp_path):
    ref = build_reference("sprint", tmp_path / "transformer")
    path = tmp_path / "loose.safetensors"
    (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").rename(path)
    assert_matches(load_transformer(path, config=config_of(tmp_path / "transformer")), ref)


def test_single_file_needs_a_config(tmp_path):
    build_reference("sana", tmp_path / "transformer")
    raises_one_line("config", load_transformer, tmp_path / "transformer" / "diffusion_pytorch_model.safetensors")


# -- bad input ----------------------------------------------------------------------------------------------

def test_missing_component_and_paths(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    raises_one_line("no transformer/ folder", load_transformer, tmp_path)
    raises_one_line("no such file", load_transformer, tmp_path / "absent")
    build_reference("sana", tmp_path / "transformer")
    (tmp_path / "transformer" / "config.json").write_text("{not json")
    raises_one_line("not valid JSON", load_transformer, tmp_path)
    (tmp_path / "transformer" / "config.json").write_text(json.dumps({"qk_norm": "l2"}))
    raises_one_line("unsupported transformer config", load_transformer, tmp_path)


def test_folder_without_weights(tmp_path):
    build_reference("sana", tmp_path / "transformer")
    (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    raises_one_line("no transformer weights", load_transformer, tmp_path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_or_truncated_safetensors(damage, tmp_path):
    build_reference("sana", tmp_path / "transformer")
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x07" * 64, "empty": b""}[damage])
    raises_one_line("diffusion_pytorch_model.safetensors.*corrupt or truncated", load_transformer, tmp_path)


def test_wrong_shapes_name_the_key_and_both_shapes(tmp_path):
    build_reference("sana", tmp_path / "transformer")
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    good = dict(state)
    state["proj_out.weight"] = torch.zeros(3, 32)
    save_file(state, weights)
    raises_one_line(r"'proj_out.weight' has shape \(3, 32\), the config expects \(8, 32\)", load_transformer, tmp_path)
    state = dict(good)
    state["transformer_blocks.1.attn1.to_k.weight"] = torch.zeros(16, 32)
    save_file(state, weights)
    raises_one_line(r"transformer_blocks.1.attn1.to_q/k/v.weight' has shape \(80, 32\).*\(96, 32\)",
                    load_transformer, tmp_path)
    state = dict(good)
    state["transformer_blocks.2.attn2.to_v.weight"] = torch.zeros(24, 7)
    save_file(state, weights)
    raises_one_line(r"to_k/v.weight have shapes \(24, 32\), \(24, 7\)", load_transformer, tmp_path)


def test_missing_and_unexpected_weights(tmp_path):
    build_reference("sana", tmp_path / "transformer")
    weights = tmp_path / "transformer" / "diffusion_pytorch_model.safetensors"
    good = load_file(weights)
    state = {**good, "extra.head.weight": torch.ones(2)}
    save_file(state, weights)
    assert load_transformer(tmp_path).load_report.unexpected == ["extra.head.weight"]
    del state["transformer_blocks.0.attn1.to_v.weight"]
    save_file(state, weights)
    raises_one_line("lacks transformer_blocks.0.attn1.to_v.weight", load_transformer, tmp_path)
    state = dict(good)
    del state["caption_norm.weight"]
    save_file(state, weights)
    raises_one_line("lacks 1 weight.*caption_norm.weight", load_transformer, tmp_path)


class Arbitrary:
    """Any class: unpickling it would run code, so weights_only refuses it."""


@pytest.mark.parametrize("payload", [
    "a string", [torch.ones(2)], {}, {"state_dict": {"w": "not a tensor"}}, {"w": torch.ones(1), "step": 3},
    {"state_dict": {"w": torch.ones(1)}, "object": Arbitrary()}, Arbitrary(),
], ids=["string", "list", "empty", "non-tensor", "flat-with-int", "object-inside", "object"])
def test_pth_that_is_not_a_plain_state_dict(payload, tmp_path):
    build_reference("sana", tmp_path / "transformer")
    path = tmp_path / "bad.pth"
    torch.save(payload, path)
    raises_one_line("bad.pth is not a plain state dict", load_transformer, path,
                    config=config_of(tmp_path / "transformer"))


def test_pth_that_is_not_a_pickle_at_all(tmp_path):
    build_reference("sana", tmp_path / "transformer")
    path = tmp_path / "noise.pth"
    path.write_bytes(b"\x00\x01not a checkpoint")
    raises_one_line("noise.pth is not a plain state dict", load_transformer, path,
                    config=config_of(tmp_path / "transformer"))


def test_reading_to_a_device_and_dtype_casts_tensor_by_tensor_as_the_host_would(tmp_path):
    from sana.loading.files import read_safetensors

    state = {"w": torch.randn(4, 3), "half": torch.randn(5).half(), "index": torch.arange(3)}
    save_file(state, str(tmp_path / "w.safetensors"))
    read = read_safetensors(tmp_path / "w.safetensors", device="cpu", dtype=torch.bfloat16)
    assert torch.equal(read["w"], state["w"].to(torch.bfloat16)) and read["half"].dtype == torch.bfloat16
    assert torch.equal(read["half"], state["half"].to(torch.bfloat16))
    assert torch.equal(read["index"], state["index"])  # integers keep their type
    assert read_safetensors(tmp_path / "w.safetensors")["half"].dtype == torch.float16  # no dtype: the file's own


def test_components_load_side_by_side_and_the_first_failure_in_order_is_raised():
    import threading

    from sana.pipelines.common import load_together

    names, both_running = [], threading.Barrier(2, timeout=10)

    def slow(name):
        def load():
            both_running.wait()  # fails unless the two loaders run at the same time
            names.append(name)
            return name
        return load

    assert load_together({"a": slow("a"), "b": slow("b")}) == {"a": "a", "b": "b"}

    def broken(message):
        def load():
            raise SanaError(message)
        return load

    finished = []
    with pytest.raises(SanaError, match="first"):
        load_together({"ok": lambda: finished.append(1), "x": broken("first"), "y": broken("second")})
    assert finished == [1]  # every loader ran to its end


def test_work_on_a_loaded_component_runs_in_the_calling_thread_while_the_others_load():
    import threading

    from sana.pipelines.common import load_together

    slow_may_finish, seen = threading.Event(), []

    def slow():
        assert slow_may_finish.wait(timeout=10)  # only once the fast component's follow-up has run
        return "slow"

    def on_fast(component):
        seen.append((component, threading.current_thread() is threading.main_thread()))
        slow_may_finish.set()

    assert load_together({"slow": slow, "fast": lambda: "fast"}, {"fast": on_fast}) == {"slow": "slow", "fast": "fast"}
    assert seen == [("fast", True)]


@pytest.mark.gpu
def test_reading_straight_to_a_gpu_gives_the_hosts_tensors_cast(tmp_path):
    from sana.loading.files import read_safetensors

    state = {f"w{i}": torch.randn(256, 512) for i in range(8)}
    save_file(state, str(tmp_path / "w.safetensors"))
    busy = torch.randn(4096, 4096, device="cuda")
    for _ in range(20):  # kernels queued on the default stream while the copies run on their own
        busy = busy @ busy / 64
    read = read_safetensors(tmp_path / "w.safetensors", device="cuda", dtype=torch.bfloat16)
    for key, tensor in state.items():
        assert read[key].device.type == "cuda" and torch.equal(read[key].cpu(), tensor.to(torch.bfloat16))


def test_a_large_tensor_is_cast_on_the_host_before_it_moves(tmp_path, monkeypatch):
    from sana.loading import files

    state = {"big": torch.randn(64, 64), "small": torch.randn(4)}
    save_file(state, str(tmp_path / "w.safetensors"))
    monkeypatch.setattr(files, "HOST_CAST_BYTES", 1024)  # "big" (16 KiB fp32) is over it
    moved = []
    to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device):
            moved.append(self.dtype)
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    read = files.read_safetensors(tmp_path / "w.safetensors", device=torch.device("cpu"), dtype=torch.bfloat16)
    assert sorted(map(str, moved)) == ["torch.bfloat16", "torch.float32"]  # big moved cast, small moved as stored
    assert all(torch.equal(read[k], state[k].to(torch.bfloat16)) for k in state)


def test_running_out_of_memory_while_copying_is_not_called_a_corrupt_file(tmp_path, monkeypatch):
    from sana.loading.files import read_safetensors

    save_file({"w": torch.randn(4, 4)}, str(tmp_path / "w.safetensors"))
    to = torch.Tensor.to

    def full_device(self, *args, **kwargs):
        if args and isinstance(args[0], torch.device):
            raise torch.OutOfMemoryError("no room on the device")
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", full_device)
    with pytest.raises(torch.OutOfMemoryError):  # the memory plan's fallbacks see it as what it is
        read_safetensors(tmp_path / "w.safetensors", device=torch.device("cpu"))
