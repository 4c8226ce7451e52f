"""A model folder carries its sampling defaults: fine-tuning writes its base's into the exported model (an RL run
the rollouts' guidance), and `sana gen` / `sana shapes score` / the server use them for a folder outside the registry."""

from __future__ import annotations

import json

import pytest
import torch

from sana.components import SAMPLING_DEFAULTS_KEY, folder_sampling_defaults
from sana.errors import SanaError
from sana_cli.gen import model_defaults
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


def test_a_run_records_its_bases_defaults_and_rl_exports_the_rollouts_guidance():
    from sana.registry import get_spec
    from sana.training.config import TrainConfig
    from sana.training.rl.config import RLConfig
    from sana_cli.finetune import base_sampling_defaults

    nano = base_sampling_defaults("nano")
    assert nano == {k: v for k, v in get_spec("nano").defaults.items() if k != "dtype"} and nano["guidance"] == 3.0
    supervised = TrainConfig(data="d", out="o", model_dir="m", sampling_defaults=nano)
    assert supervised.sampling_defaults_for_export() == nano
    rl = RLConfig(data="shapes", out="o", model_dir="m", sampling_defaults=nano)
    assert rl.sampling_defaults_for_export() == {**nano, "guidance": 1.0}  # the recipe's CFG-free rollouts
    guided = RLConfig(data="shapes", out="o", model_dir="m", sampling_defaults=nano, guidance=3.0)
    assert guided.sampling_defaults_for_export()["guidance"] == 3.0
