"""A model folder carries its sampling defaults: fine-tuning writes its base's into the exported model (an RL run
the rollouts' guidance), and `sana gen` / `sana shapes score` / the server use them for a folder outside the registry."""

from __future__ import annotations

import json

import pytest
import torch

from sana.components import SAMPLING_DEFAULTS_KEY, folder_sampling_defaults
from sana.errors import SanaError
from sana_cli.image_settings import model_defaults
from tests.tiny_pipeline import build_pipeline


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    build_pipeline(path)
    return path


def test_an_export_carries_the_defaults_it_is_given_and_keeps_the_index(base_model, tmp_path):
    from sana.loading import load_transformer
    from sana.training.export import save_model_folder

    model = load_transformer(base_model)
    out = save_model_folder(dict(model.state_dict()), model.config, base_model, tmp_path / "model", torch.float32,
                            {"guidance": 1.0, "steps": 20})
    index = json.loads((out / "model_index.json").read_text())
    base_index = json.loads((base_model / "model_index.json").read_text())
    assert index == {**base_index, SAMPLING_DEFAULTS_KEY: {"guidance": 1.0, "steps": 20}}
    assert folder_sampling_defaults(out) == {"guidance": 1.0, "steps": 20}
    assert folder_sampling_defaults(base_model) == {}
    # diffusers loads it as before: keys that start with "_" are not components
    from diffusers import SanaPipeline

    assert SanaPipeline.from_pretrained(out).transformer is not None


def test_sana_gen_takes_a_folders_own_defaults(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "SanaPipeline",
                                                           SAMPLING_DEFAULTS_KEY: {"guidance": 1.0, "steps": 8}}))
    defaults = model_defaults(None, {}, "sana", 128, tmp_path)
    assert (defaults.cfg, defaults.steps) == (1.0, 8)
    assert model_defaults(None, {}, "sana", 128).cfg == 4.5  # a folder without its own: the generic SANA defaults
    (tmp_path / "model_index.json").write_text(json.dumps({SAMPLING_DEFAULTS_KEY: [1, 2]}))
    with pytest.raises(SanaError, match="is not a table of settings"):
        model_defaults(None, {}, "sana", 128, tmp_path)


def test_an_rl_export_samples_at_the_flow_shift_it_was_aligned_for(base_model, tmp_path):
    """`--rl --flow-shift S`: the export's scheduler config says S (`sana gen` and diffusers read it there), and
    the base's file, which the export hard-links where it can, keeps its own shift."""
    from sana.loading import load_transformer
    from sana.training.export import save_model_folder

    scheduler = base_model / "scheduler" / "scheduler_config.json"
    before = scheduler.read_text()
    model = load_transformer(base_model)
    out = save_model_folder(dict(model.state_dict()), model.config, base_model, tmp_path / "model", torch.float32,
                            {"guidance": 1.0, "flow_shift": 15.0}, flow_shift=15.0)
    exported = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert exported == {**json.loads(before), "flow_shift": 15.0}
    assert scheduler.read_text() == before
    assert model_defaults(None, exported, "sana", 128, out).shift == 15.0
    plain = save_model_folder(dict(model.state_dict()), model.config, base_model, tmp_path / "plain", torch.float32)
    assert (plain / "scheduler" / "scheduler_config.json").read_text() == before


def test_a_run_records_its_bases_defaults_and_rl_exports_the_rollouts_guidance():
    from sana.registry import get_spec
    from sana.training.config import TrainConfig
    from sana.training.rl.config import RLConfig
    from sana_cli.finetune_settings import base_sampling_defaults

    shipped = base_sampling_defaults("nano")  # the RL'd nano model samples CFG-free
    assert shipped == {k: v for k, v in get_spec("nano").defaults.items() if k != "dtype"}
    assert shipped["guidance"] == 1.0
    nano = {**shipped, "guidance": 3.0}  # a base sampled with CFG, as most are
    supervised = TrainConfig(data="d", out="o", model_dir="m", sampling_defaults=nano)
    assert supervised.sampling_defaults_for_export() == nano
    rl = RLConfig(data="shapes", out="o", model_dir="m", sampling_defaults=nano)
    assert rl.sampling_defaults_for_export() == {**nano, "guidance": 1.0}  # the recipe's CFG-free rollouts
    guided = RLConfig(data="shapes", out="o", model_dir="m", sampling_defaults=nano, guidance=3.0)
    assert guided.sampling_defaults_for_export()["guidance"] == 3.0
    assert rl.sampler_flow_shift is None and supervised.sampler_flow_shift is None
    shifted = RLConfig(data="shapes", out="o", model_dir="m", sampling_defaults=nano, flow_shift=30.0)
    assert shifted.sampler_flow_shift == 30.0  # RL's --flow-shift is its sampler's: the export samples with it
    assert shifted.sampling_defaults_for_export() == {**nano, "guidance": 1.0, "flow_shift": 30.0}
    assert shifted.lora_sampling_defaults() == {"guidance": 1.0, "flow_shift": 30.0}
    noise = TrainConfig(data="d", out="o", model_dir="m", sampling_defaults=nano, flow_shift=15.0)
    assert noise.sampler_flow_shift is None  # a supervised run's --flow-shift shapes its training noise only


def test_sana_video_takes_a_folders_own_defaults_over_its_architectures_preset(tmp_path):
    from sana.nano.video_build import video_transformer_config
    from sana.registry import get_spec
    from sana.registry import clip_defaults

    config = video_transformer_config()
    preset = clip_defaults(None, {}, config, tmp_path)  # no model_index.json: the matching preset's (nano-video)
    assert (preset.steps, preset.cfg, preset.frames) == tuple(get_spec("nano-video").defaults[k]
                                                              for k in ("steps", "guidance", "frames"))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "SanaVideoPipeline",
                                                           SAMPLING_DEFAULTS_KEY: {"guidance": 1.5, "steps": 9}}))
    carried = clip_defaults(None, {}, config, tmp_path)
    assert (carried.cfg, carried.steps, carried.frames, carried.fps) == (1.5, 9, preset.frames, preset.fps)
    # a registry model keeps its preset; the scheduler file still wins for the shift
    assert clip_defaults(get_spec("nano-video"), {"_class_name": "DPMSolverMultistepScheduler", "flow_shift": 5.0},
                         config, tmp_path).shift == 5.0
    assert clip_defaults(get_spec("nano-video"), {}, config, tmp_path).cfg == preset.cfg


def test_a_lora_carries_only_the_settings_it_changes_and_sana_gen_samples_with_them(base_model, tmp_path):
    """An RL LoRA from CFG-free rollouts carries guidance 1 in its metadata; `sana gen --lora` samples CFG-free
    unless told otherwise, diffusers loads the file as before, and the weights are unchanged by the rewrite."""
    from diffusers import SanaPipeline, SanaTransformer2DModel
    from safetensors import safe_open

    from sana.lora import SAMPLING_METADATA_KEY, lora_sampling_defaults
    from sana.training.adapters import _add_metadata
    from sana.training.config import TrainConfig
    from sana.training.rl.config import RLConfig
    from tests.cli_helpers import run_sana
    from tests.test_lora import save_lora

    base = {"guidance": 4.5, "steps": 20}
    assert TrainConfig(data="d", out="o", model_dir="m", sampling_defaults=base).lora_sampling_defaults() == {}
    assert RLConfig(data="s", out="o", model_dir="m", sampling_defaults=base).lora_sampling_defaults() == \
        {"guidance": 1.0}
    assert RLConfig(data="s", out="o", model_dir="m").lora_sampling_defaults() == {"guidance": 1.0}

    lora = save_lora(SanaTransformer2DModel.from_pretrained(base_model / "transformer"), tmp_path / "lora")
    with safe_open(str(lora), framework="pt") as f:
        before_meta, before = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    assert lora_sampling_defaults(lora) == {}
    _add_metadata(lora, {SAMPLING_METADATA_KEY: json.dumps({"guidance": 1.0})})
    with safe_open(str(lora), framework="pt") as f:
        assert dict(f.metadata()) == {**before_meta, SAMPLING_METADATA_KEY: '{"guidance": 1.0}'}
        assert all(torch.equal(before[k], f.get_tensor(k)) for k in f.keys()) and set(f.keys()) == set(before)
    assert lora_sampling_defaults(lora) == {"guidance": 1.0}
    pipe = SanaPipeline.from_pretrained(base_model)
    pipe.load_lora_weights(lora.parent)  # other loaders ignore the key

    common = ("--model", str(base_model), "--res", "64", "--steps", "1", "--device", "cpu", "--dtype", "fp32")
    result = run_sana("gen", "a red circle", "--lora", str(lora), "-o", str(tmp_path / "a.png"), *common)
    assert result.returncode == 0, result.stderr
    assert "guidance 1.0 from the LoRA" in " ".join(result.stderr.split())
    assert json.loads(run_sana("info", str(tmp_path / "a.png"), "--json").stdout)["guidance"] == 1.0
    result = run_sana("gen", "a red circle", "--lora", str(lora), "--cfg", "2", "-o", str(tmp_path / "b.png"), *common)
    assert result.returncode == 0, result.stderr
    assert "from the LoRA" not in result.stderr
    assert json.loads(run_sana("info", str(tmp_path / "b.png"), "--json").stdout)["guidance"] == 2.0


def test_loras_that_disagree_on_a_setting_leave_the_models_default(tmp_path):
    from sana.lora import SAMPLING_METADATA_KEY
    from sana_cli.image_settings import ModelDefaults, with_lora_defaults

    def lora_file(name: str, settings: dict):
        metadata = json.dumps({"__metadata__": {SAMPLING_METADATA_KEY: json.dumps(settings)}}).encode()
        path = tmp_path / f"{name}.safetensors"
        path.write_bytes(len(metadata).to_bytes(8, "little") + metadata)
        return path

    defaults = ModelDefaults(steps=20, cfg=4.5, pag=0.0, pag_layer=8, sampler="flow-dpm", shift=3.0, resolution=64)
    a, b = lora_file("a", {"guidance": 1.0, "steps": 8}), lora_file("b", {"guidance": 2.0, "steps": 8})
    merged = with_lora_defaults(defaults, [(a, 1.0), (b, 0.5)])
    assert (merged.cfg, merged.steps) == (4.5, 8)
    assert with_lora_defaults(defaults, [(a, 1.0)], given={"cfg"}).cfg == 4.5
    assert with_lora_defaults(defaults, [(tmp_path / "missing.safetensors", 1.0)]) == defaults


def test_validation_samples_at_the_base_models_guidance_unless_told():
    from sana.training.config import TrainConfig
    from sana.training.rl.config import RLConfig

    base = dict(data="d", out="o", model_dir="m")
    assert TrainConfig(**base, sampling_defaults={"guidance": 2.0, "steps": 20}).validation_guidance() == 2.0
    assert TrainConfig(**base, sampling_defaults={"guidance": 2.0}, val_guidance=6.0).validation_guidance() == 6.0
    assert TrainConfig(**base).validation_guidance() == 4.5  # a folder without defaults: SANA's
    assert RLConfig(**base, sampling_defaults={"guidance": 3.0}).validation_guidance() == 1.0  # as the rollouts
    assert RLConfig(**base, sampling_defaults={"guidance": 4.5}, guidance=3.0).validation_guidance() == 3.0
    assert RLConfig(**base, guidance=3.0, val_guidance=1.5).validation_guidance() == 1.5
