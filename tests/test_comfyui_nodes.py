"""The ComfyUI node pack without ComfyUI: each node's declared contract and its function on the nano model (shapes,
ranges, dtypes, the same pixels as the pipeline), the progress bar and interrupt through stand-ins of ComfyUI's
modules, Sana Save's metadata, the example workflows against the nodes, and `sana comfy install`."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import assert_one_line_error, run_sana

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the pack is a top-level folder of the checkout

import comfyui_sana  # noqa: E402
from comfyui_sana import host  # noqa: E402
from sana.errors import SanaError  # noqa: E402

NODES = comfyui_sana.NODE_CLASS_MAPPINGS
CAPTION = "a large red circle in the center on a white background"
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


def node(name: str):
    return NODES["SanaEngine" + name]()


@pytest.fixture(scope="module")
def nano():
    (model,) = node("ModelLoader").load("nano", "fp32", "auto")
    model.pipeline()
    return model


@pytest.fixture(scope="module")
def encoded(nano):
    return node("TextEncode").encode(nano, CAPTION, "")[0]


@pytest.fixture(autouse=True)
def output_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(host, "output_directory", lambda: tmp_path / "output")
    return tmp_path / "output"


# -- declarations -----------------------------------------------------------------------------------------------

def test_every_node_declares_a_complete_contract():
    titles = {"Model Loader", "Text Encode", "Sampler", "Decode", "Generate", "Sprint", "LoRA", "Save", "Video",
              "World"}
    assert set(comfyui_sana.NODE_DISPLAY_NAME_MAPPINGS.values()) == {f"Sana {t}" for t in titles}
    for node_id, cls in NODES.items():
        assert node_id.startswith("SanaEngine") and cls.CATEGORY == "sana" and cls.DESCRIPTION
        assert isinstance(cls.RETURN_TYPES, tuple) and callable(getattr(cls(), cls.FUNCTION))
        assert len(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)
        inputs = cls.INPUT_TYPES()
        assert set(inputs) <= {"required", "optional", "hidden"}
        for spec in [*inputs["required"].values(), *inputs.get("optional", {}).values()]:
            kind = spec[0]
            assert isinstance(kind, list) or isinstance(kind, str), spec
            if kind in ("INT", "FLOAT"):
                options = spec[1]
                assert options["min"] <= options["default"] <= options["max"], spec
    assert NODES["SanaEngineSampler"].RETURN_TYPES == ("LATENT",)
    assert NODES["SanaEngineDecode"].RETURN_TYPES == ("IMAGE", "SANA_INFO")
    assert NODES["SanaEngineSave"].OUTPUT_NODE is True
    loader = NODES["SanaEngineModelLoader"].INPUT_TYPES()["required"]
    assert "nano" in loader["model"][0] and "sana1.5-1.6b" in loader["model"][0]


def test_loader_refuses_unknown_and_missing_models_in_one_line(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    validate = NODES["SanaEngineModelLoader"].VALIDATE_INPUTS
    assert validate("nano") is True
    assert validate("no-such-model").startswith("unknown model 'no-such-model'")
    missing = validate("sana-1.6b")
    assert "is not downloaded" in missing and "sana models pull sana-1.6b" in missing and "\n" not in missing
    assert "not a model directory" in validate(str(tmp_path))


# -- the image steps on the nano model --------------------------------------------------------------------------

def test_sampler_latent_and_decode_image_give_the_pipelines_pixels(nano, encoded):
    (latent,) = node("Sampler").sample(nano, encoded, 3, 3, 3.0, 0.0, "flow-dpm", 0.0, 128, 96, 2)
    samples = latent["samples"]
    pipe = nano.pipeline()
    channels, factor = pipe.transformer.config.in_channels, pipe.vae_scale_factor
    # [B, C, H/f, W/f]: nano has 8 channels and 16 px a latent (the released models 32 and 32) and no aspect bins
    assert samples.dtype == torch.float32 and samples.device.type == "cpu"
    assert samples.shape == (2, channels, 96 // factor, 128 // factor)
    image, info = node("Decode").decode(nano, latent)
    assert image.shape == (2, 96, 128, 3) and image.dtype == torch.float32
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert [r["seed"] for r in info] == [3, 4] and info[0]["width"] == 128 and info[0]["steps"] == 3

    same, records = node("Generate").generate(nano, CAPTION, "", 3, 3, 3.0, 0.0, "flow-dpm", 0.0, 128, 96, 2)
    assert torch.equal(image, same)  # the steps apart draw what `generate` (sana gen's run) draws
    assert records[1]["seed"] == 4 and records[0]["extra"]["generated_size"] == [128, 96]


def test_generate_takes_the_models_defaults_for_its_zero_widgets(nano):
    """Steps 0, guidance -1 and sides 0 are the model's own (nano: 256 px at guidance 3), as `sana gen` without
    those options; the widgets' defaults, so a Sprint model works with them too."""
    types = NODES["SanaEngineGenerate"].INPUT_TYPES()["required"]
    assert [types[k][1]["default"] for k in ("steps", "guidance", "width", "height")] == [0, -1.0, 0, 0]
    _, records = node("Generate").generate(nano, CAPTION, "", 5, 0, -1.0, 0.0, "flow-dpm", 0.0, 0, 0, 1)
    d = nano.image_defaults()
    assert (records[0]["steps"], records[0]["guidance"], records[0]["width"], records[0]["height"]) == (
        d.steps, d.cfg, 256, 256)


def test_a_sprint_images_record_replays_with_sana_sprint_from_any_folder(tmp_path, output_folder):
    """A Sprint node's non-default timesteps and a folder model picked by name are recorded so that `sana sprint
    --from` gives the same pixels; the negative prompt, which Sprint does not take, is not recorded."""
    from sana.outputs import read_metadata
    from tiny_pipeline import build_pipeline

    build_pipeline(tmp_path / "models" / "tiny-sprint", "sprint", seed=1)
    (model,) = node("ModelLoader").load(str(tmp_path / "models" / "tiny-sprint"), "fp32", "auto")
    (cond,) = node("TextEncode").encode(model, "a cat", "blurry")
    (latent,) = node("Sprint").sample(model, cond, 3, 2, 4.5, 64, 64, 1, 1.5, 0.6)
    image, info = node("Decode").decode(model, latent)
    saved = output_folder / node("Save").save(image, "sprint", info)["ui"]["images"][0]["filename"]
    record = read_metadata(saved)
    assert record.extra["max_timesteps"] == 1.5 and record.extra["intermediate_timesteps"] == 0.6
    assert record.model == str((tmp_path / "models" / "tiny-sprint").resolve()) and record.negative_prompt == ""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_sana("sprint", "--from", str(saved), "-o", "again.png", "--device", "cpu", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), np.asarray(Image.open(elsewhere / "again.png")))


def test_bad_inputs_are_one_line_errors(nano, encoded):
    with pytest.raises(SanaError, match="^nano is a SANA image model; Sana Sprint takes a SANA-Sprint model$"):
        node("Sprint").sample(nano, encoded, 0, 2, 4.5, 256, 256, 1)
    with pytest.raises(SanaError, match="does not fit in memory here"):
        node("Sampler").sample(nano, encoded, 0, 2, 3.0, 0.0, "flow-dpm", 0.0, 16384, 16384, 64)
    with pytest.raises(SanaError, match=r"this latent has shape \[1, 4, 8, 8\]"):
        node("Decode").decode(nano, {"samples": torch.zeros(1, 4, 8, 8)})


def _lora(path: Path, block: int) -> Path:
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    module = f"transformer.transformer_blocks.{block}.attn1.to_q"  # nano: 6 heads of 32
    save_file({f"{module}.lora_A.weight": torch.randn(2, 192, generator=generator),
               f"{module}.lora_B.weight": torch.randn(192, 2, generator=generator)}, path)
    return path


def test_lora_changes_the_image_and_refuses_another_models(nano, tmp_path):
    plain, _ = node("Generate").generate(nano, CAPTION, "", 2, 2, 3.0, 0.0, "flow-dpm", 0.0, 128, 128, 1)
    lora = _lora(tmp_path / "ours.safetensors", 0)
    assert NODES["SanaEngineLoRA"].VALIDATE_INPUTS(str(lora)) is True
    assert "no LoRA named" in NODES["SanaEngineLoRA"].VALIDATE_INPUTS("missing.safetensors")
    (with_lora,) = node("LoRA").apply(nano, str(lora), 1.0)
    changed, info = node("Generate").generate(with_lora, CAPTION, "", 2, 2, 3.0, 0.0, "flow-dpm", 0.0, 128, 128, 1)
    assert not torch.equal(plain, changed) and info[0]["loras"][0]["scale"] == 1.0
    foreign = _lora(tmp_path / "foreign.safetensors", 9)  # nano has 8 blocks
    with pytest.raises(SanaError, match="not in this model") as caught:
        node("LoRA").apply(nano, str(foreign), 1.0)
    assert "\n" not in str(caught.value)
    nano.pipeline()  # the plain model back for the tests after this one


# -- ComfyUI's progress bar and interrupt -----------------------------------------------------------------------

class Interrupted(Exception):
    pass


@pytest.fixture
def fake_comfy(monkeypatch):
    """comfy.utils.ProgressBar and comfy.model_management's interrupt, recording what the nodes do with them."""
    calls = {"bar": [], "interrupt_after": None, "checks": 0}

    class ProgressBar:
        def __init__(self, total, node_id=None):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls["bar"].append((value, total))

    def throw_exception_if_processing_interrupted():
        calls["checks"] += 1
        if calls["interrupt_after"] is not None and len(calls["bar"]) >= calls["interrupt_after"]:
            raise Interrupted()

    comfy = types.ModuleType("comfy")
    utils = types.ModuleType("comfy.utils")
    utils.ProgressBar = ProgressBar
    management = types.ModuleType("comfy.model_management")
    management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    management.get_torch_device = lambda: torch.device("cpu")
    management.unload_all_models = lambda: None
    management.soft_empty_cache = lambda: None
    for name, module in (("comfy", comfy), ("comfy.utils", utils), ("comfy.model_management", management)):
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_progress_follows_the_steps_and_interrupt_stops_the_loop(nano, encoded, fake_comfy):
    node("Sampler").sample(nano, encoded, 0, 5, 3.0, 0.0, "flow-euler", 0.0, 128, 128, 1)
    assert fake_comfy["bar"] == [(i, 5) for i in range(1, 6)]
    fake_comfy["bar"].clear()
    fake_comfy["interrupt_after"] = 2
    with pytest.raises(Interrupted):
        node("Sampler").sample(nano, encoded, 0, 50, 3.0, 0.0, "flow-euler", 0.0, 128, 128, 1)
    assert len(fake_comfy["bar"]) == 2  # stopped after the second of 50 steps


# -- Sana Save ---------------------------------------------------------------------------------------------------

def test_save_writes_our_metadata_and_comfyuis_workflow(nano, output_folder):
    from sana.outputs import read_metadata

    image, info = node("Generate").generate(nano, CAPTION, "", 7, 2, 3.0, 0.0, "flow-dpm", 0.0, 128, 96, 2)
    graph, workflow = {"1": {"class_type": "SanaEngineGenerate", "inputs": {}}}, {"nodes": [], "links": []}
    result = node("Save").save(image, "shapes/run", info, prompt=graph, extra_pnginfo={"workflow": workflow})
    files = [output_folder / "shapes" / item["filename"] for item in result["ui"]["images"]]
    assert [f.name for f in files] == ["run_00001_.png", "run_00002_.png"]
    assert all(item["subfolder"] == "shapes" and item["type"] == "output" for item in result["ui"]["images"])
    saved = Image.open(files[1])
    assert saved.size == (128, 96)
    assert np.array_equal(np.asarray(saved.convert("RGB")), (image[1].numpy() * 255).round().astype(np.uint8))
    assert json.loads(saved.info["prompt"]) == graph and json.loads(saved.info["workflow"]) == workflow
    assert "Seed: 8" in saved.info["parameters"]
    record = read_metadata(files[1])
    assert (record.prompt, record.seed, record.model, record.steps, record.width) == (CAPTION, 8, "nano", 2, 128)

    again = node("Save").save(image[:1], "shapes/run")  # no info: ComfyUI's chunks only, the counter goes on
    plain = Image.open(output_folder / "shapes" / again["ui"]["images"][0]["filename"])
    assert again["ui"]["images"][0]["filename"] == "run_00003_.png" and "parameters" not in plain.info


def test_save_writes_a_clip_as_mp4_with_its_record(output_folder):
    from sana.outputs import GenerationRecord, read_metadata
    from dataclasses import asdict

    frames = torch.rand(9, 32, 48, 3)
    record = asdict(GenerationRecord(prompt="waves", model="tiny", family="video", seed=1, frames=9, fps=8.0,
                                     width=48, height=32))
    result = node("Save").save(frames, "clip", [record])
    assert result["ui"]["animated"] == (True,)
    path = output_folder / result["ui"]["images"][0]["filename"]
    assert path.suffix == ".mp4" and read_metadata(path).frames == 9


def _clip_info(frames: int) -> list[dict]:
    from dataclasses import asdict

    from sana.outputs import GenerationRecord

    return [asdict(GenerationRecord(prompt="waves", model="tiny", family="video", seed=1, frames=frames, fps=8.0,
                                    width=48, height=32))]


def test_save_of_frames_cut_from_a_clip_gives_them_no_clip_record(output_folder, caplog):
    """Frames picked out of a 9-frame clip are not the clip: no file says it is (ComfyUI's workflow still does)."""
    graph = {"1": {"class_type": "SanaEngineVideo", "inputs": {}}}
    result = node("Save").save(torch.rand(4, 32, 48, 3), "cut", _clip_info(9), prompt=graph)
    files = [output_folder / item["filename"] for item in result["ui"]["images"]]
    assert [f.suffix for f in files] == [".png"] * 4 and "animated" not in result["ui"]
    for file in files:
        saved = Image.open(file)
        assert "sana" not in saved.info and "parameters" not in saved.info
        assert json.loads(saved.info["prompt"]) == graph
    assert "4 images of a 9-frame clip" in caplog.text

    one = node("Save").save(torch.rand(1, 32, 48, 3), "cut", _clip_info(9))  # a single frame of it: the same
    assert "sana" not in Image.open(output_folder / one["ui"]["images"][0]["filename"]).info


def test_save_of_a_one_frame_clip_is_a_png_with_its_record(output_folder):
    from sana.outputs import read_metadata

    result = node("Save").save(torch.rand(1, 32, 48, 3), "still", _clip_info(1))
    assert read_metadata(output_folder / result["ui"]["images"][0]["filename"]).frames == 1


@pytest.fixture
def metadata_disabled(monkeypatch):
    """ComfyUI started with --disable-metadata (its comfy.cli_args.args, as its own save nodes read it)."""
    comfy, cli_args = types.ModuleType("comfy"), types.ModuleType("comfy.cli_args")
    cli_args.args = types.SimpleNamespace(disable_metadata=True)
    for name, module in (("comfy", comfy), ("comfy.cli_args", cli_args)):
        monkeypatch.setitem(sys.modules, name, module)


def test_save_under_disable_metadata_writes_the_pixels_only(nano, output_folder, metadata_disabled):
    from sana.outputs.video import MP4_JSON_KEY, MP4_PARAMETERS_KEY, mp4_tags

    image, info = node("Generate").generate(nano, CAPTION, "", 7, 2, 3.0, 0.0, "flow-dpm", 0.0, 128, 96, 1)
    result = node("Save").save(image, "plain", info, prompt={"1": {}}, extra_pnginfo={"workflow": {"nodes": []}})
    saved = Image.open(output_folder / result["ui"]["images"][0]["filename"])
    assert not {"sana", "parameters", "XML:com.adobe.xmp", "prompt", "workflow"} & set(saved.info), saved.info
    assert np.array_equal(np.asarray(saved.convert("RGB")), (image[0].numpy() * 255).round().astype(np.uint8))

    clip = node("Save").save(torch.rand(9, 32, 48, 3), "clip", _clip_info(9))  # still an MP4, with no record
    path = output_folder / clip["ui"]["images"][0]["filename"]
    assert path.suffix == ".mp4" and clip["ui"]["animated"] == (True,)
    tags = mp4_tags(path)
    assert MP4_JSON_KEY not in tags and MP4_PARAMETERS_KEY not in tags, tags
    assert sorted(p.name for p in output_folder.iterdir()) == sorted([saved.filename.rsplit("/", 1)[-1], path.name])


# -- the example workflows -------------------------------------------------------------------------------------

def _widgets(cls) -> list[tuple[str, dict]]:
    inputs = cls.INPUT_TYPES()
    return [(name, spec[1] if len(spec) > 1 else {}) for part in ("required", "optional")
            for name, spec in inputs.get(part, {}).items() if isinstance(spec[0], list) or spec[0] in WIDGET_TYPES]


@pytest.mark.parametrize("name", ["text-to-image", "4k", "sprint", "lora"])
def test_workflow_ui_and_api_formats_describe_the_same_graph(name):
    ui = json.loads((REPO / "comfyui_sana" / "example_workflows" / f"{name}.json").read_text())
    api = json.loads((REPO / "comfyui_sana" / "api_workflows" / f"{name}.api.json").read_text())
    assert {str(n["id"]) for n in ui["nodes"]} == set(api)
    links = {link[0]: link for link in ui["links"]}
    for ui_node in ui["nodes"]:
        entry = api[str(ui_node["id"])]
        cls = NODES[ui_node["type"]]
        assert entry["class_type"] == ui_node["type"]
        # widget values in INPUT_TYPES order (a seed's "control after generate" choice after it)
        values = iter(ui_node["widgets_values"])
        for widget, options in _widgets(cls):
            assert entry["inputs"][widget] == next(values), (name, widget)
            if options.get("control_after_generate"):
                assert next(values) in ("fixed", "randomize", "increment", "decrement")
        assert next(values, None) is None
        for socket in ui_node["inputs"]:
            _, source, slot, target, _, kind = links[socket["link"]]
            assert target == ui_node["id"] and entry["inputs"][socket["name"]] == [str(source), slot]
            assert NODES[api[str(source)]["class_type"]].RETURN_TYPES[slot] == kind
    assert any(e["class_type"] == "SanaEngineSave" for e in api.values())


# -- sana comfy install ------------------------------------------------------------------------------------------

def test_comfy_install_links_the_pack_and_says_so(tmp_path):
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "custom_nodes").mkdir(parents=True)
    (comfyui / "main.py").write_text("")
    result = run_sana("comfy", "install", str(comfyui))
    assert result.returncode == 0, result.stderr
    target = comfyui / "custom_nodes" / "comfyui_sana"
    assert target.is_symlink() and (target / "image_nodes.py").is_file()
    assert str(target) in result.stdout and "sana-cli" in result.stderr
    assert "already installed" in run_sana("comfy", "install", str(comfyui)).stdout
    assert "a link to" in assert_one_line_error(run_sana("comfy", "install", str(comfyui), "--copy"))
    copied = run_sana("comfy", "install", str(comfyui), "--copy", "--force")
    assert copied.returncode == 0 and not target.is_symlink() and (target / "pyproject.toml").is_file()
    assert "not a ComfyUI folder" in assert_one_line_error(run_sana("comfy", "install", str(tmp_path)))
    shutil.rmtree(target)  # the copy the --force above made
    target.write_text("a note of the user's")  # a file of that name is not the pack: never removed
    assert "is a file" in assert_one_line_error(run_sana("comfy", "install", str(comfyui), "--force"))
    assert target.read_text() == "a note of the user's"


def test_comfy_install_copy_again_is_already_installed_unless_the_copy_differs(tmp_path):
    comfyui = tmp_path / "ComfyUI"
    (comfyui / "custom_nodes").mkdir(parents=True)
    (comfyui / "main.py").write_text("")
    target = comfyui / "custom_nodes" / "comfyui_sana"
    assert run_sana("comfy", "install", str(comfyui), "--copy").returncode == 0
    (target / "__pycache__").mkdir(exist_ok=True)
    (target / "__pycache__" / "host.cpython-312.pyc").write_bytes(b"ComfyUI ran it")  # not part of the pack
    again = run_sana("comfy", "install", str(comfyui), "--copy")
    assert again.returncode == 0 and again.stdout.startswith(f"already installed: {target}"), again.stderr
    assert "--force" in assert_one_line_error(run_sana("comfy", "install", str(comfyui)))  # a link asked for

    with open(target / "host.py", "a") as edited:  # another version of the pack: kept without --force
        edited.write("# changed\n")
    refused = assert_one_line_error(run_sana("comfy", "install", str(comfyui), "--copy"))
    assert "differ" in refused and "pass --force" in refused
    assert run_sana("comfy", "install", str(comfyui), "--copy", "--force").returncode == 0
    assert (target / "host.py").read_text() == (REPO / "comfyui_sana" / "host.py").read_text()


@pytest.mark.parametrize("copy", [False, True], ids=["link", "copy"])
def test_comfy_install_into_a_folder_it_may_not_write_is_one_line(tmp_path, monkeypatch, capsys, copy):
    """In-process, the refusal made up (the tests may run as root, whom permissions do not stop)."""
    import shutil

    from sana_cli.app import main

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(args[-1]))

    comfyui = tmp_path / "ComfyUI"
    (comfyui / "custom_nodes").mkdir(parents=True)
    (comfyui / "main.py").write_text("")
    monkeypatch.setattr(Path, "symlink_to", refuse)
    monkeypatch.setattr(shutil, "copytree", refuse)
    monkeypatch.setattr(sys, "argv", ["sana", "comfy", "install", str(comfyui), *(["--copy"] if copy else [])])
    with pytest.raises(SystemExit) as exited:
        main()
    err = capsys.readouterr().err
    assert exited.value.code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"error: cannot install the pack in {comfyui / 'custom_nodes'}: Permission denied (")
    assert "PermissionError" not in err
    assert not (comfyui / "custom_nodes" / "comfyui_sana").exists()


# -- on a GPU ----------------------------------------------------------------------------------------------------

@pytest.mark.gpu
def test_nodes_on_the_gpu_under_inference_mode_give_generates_pixels():
    """ComfyUI runs nodes under torch.inference_mode(); on CUDA the DiT step replays a captured graph."""
    (model,) = node("ModelLoader").load("nano", "auto", "auto")
    with torch.inference_mode():
        (cond,) = node("TextEncode").encode(model, CAPTION, "blurry")
        (latent,) = node("Sampler").sample(model, cond, 5, 8, 3.0, 1.0, "flow-dpm", 0.0, 256, 256, 2)
        image, _ = node("Decode").decode(model, latent)
        same, _ = node("Generate").generate(model, CAPTION, "blurry", 5, 8, 3.0, 1.0, "flow-dpm", 0.0, 256, 256, 2)
    assert model.pipeline().device.type == "cuda" and image.shape == (2, 256, 256, 3)
    assert float((image - same).abs().max()) <= 1 / 255 + 1e-6
