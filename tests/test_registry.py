"""The model registry: every preset loads, resolves by each of its names, and carries what the engine needs."""

from __future__ import annotations

import dataclasses
import json
from importlib import resources

import pytest

from sana.errors import ModelNotFound
from sana.models.transformer import TransformerConfig
from sana.registry import FAMILIES, all_specs, find_spec, find_spec_by_repo, get_spec

SPECS = all_specs()
DIT_FIELDS = {f.name for f in dataclasses.fields(TransformerConfig)}
BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2}


def _normalise(key: str) -> str:
    return key.strip().lower().replace("_", "-")


def test_every_preset_file_loads():
    files = [e.name for e in resources.files("sana.presets").iterdir() if e.name.endswith(".json")]
    assert len(SPECS) == len(files) >= 14
    for entry in resources.files("sana.presets").iterdir():
        if entry.name.endswith(".json"):
            assert json.loads(entry.read_text(encoding="utf-8"))["name"] + ".json" == entry.name


def test_names_aliases_and_repos_are_unique():
    keys = [_normalise(k) for s in SPECS for k in {s.name, s.repo, s.repo.split("/")[-1], *s.aliases}]
    duplicates = {k for k in keys if keys.count(k) > 1}
    assert not duplicates


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_each_name_resolves_to_its_preset(spec):
    for key in (spec.name, spec.repo, spec.repo.split("/")[-1], *spec.aliases):
        assert find_spec(key) is spec, key
        assert find_spec(key.upper()) is spec, key  # hub ids and names are case-insensitive
    assert get_spec(spec.name.replace("-", "_")) is spec
    assert find_spec_by_repo(spec.repo.lower()) is spec


@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_each_preset_is_consistent(spec):
    assert spec.family in FAMILIES
    assert (spec.repo.count("/") == 1 or spec.extra.get("embedded")) and spec.resolution > 0 and spec.description
    assert set(spec.params) >= {"transformer", "text_encoder", "vae"}
    assert all(count > 0 for count in spec.params.values())
    assert spec.defaults["dtype"] in spec.weights
    assert {"steps", "guidance", "sampler"} <= set(spec.defaults)
    assert "flow_shift" in spec.defaults or spec.defaults["sampler"] == "scm"  # TrigFlow has no shift
    for precision, weights in spec.weights.items():
        assert weights.precision == precision and weights.variant in (None, precision)
        assert set(weights.bytes) >= {"transformer", "text_encoder", "vae", "tokenizer"}
        assert all(size > 0 for size in weights.bytes.values())
        # The transformer files hold its parameters at the precision's width (a header of names aside).
        assert weights.bytes["transformer"] == pytest.approx(spec.params["transformer"] * BYTES_PER_PARAM[precision],
                                                             rel=1e-3, abs=32_768)


IMAGE_SPECS = [s for s in SPECS if s.is_image]


@pytest.mark.parametrize("spec", IMAGE_SPECS, ids=[s.name for s in IMAGE_SPECS])
def test_image_presets_carry_every_dit_field(spec):
    assert DIT_FIELDS <= set(spec.transformer), DIT_FIELDS - set(spec.transformer)
    config = TransformerConfig.from_dict(spec.transformer)
    # DC-AE compresses 32x (the nano autoencoder 16x): the latent side is the native resolution / 32.
    assert config.sample_size * spec.extra.get("vae_factor", 32) == spec.resolution
    assert config.num_cross_attention_heads * config.cross_attention_head_dim == config.cross_attention_dim
    assert config.cross_attention_dim == config.inner_dim
    assert config.guidance_embeds == (spec.family == "sprint")
    assert (config.qk_norm == "rms_norm_across_heads") == (spec.family in ("sana1.5", "sprint"))


def test_known_facts():
    k4 = get_spec("sana-1.6b-4k")
    assert k4.transformer["interpolation_scale"] == 2.0 and k4.transformer["sample_size"] == 128
    assert get_spec("sana-1.6b-2k").transformer["interpolation_scale"] == 1.0
    assert get_spec("sana-1.6b").transformer["interpolation_scale"] is None
    assert get_spec("sana1.5-4.8b").transformer["num_layers"] == 60
    assert get_spec("sana-0.6b").transformer["num_layers"] == 28
    assert get_spec("sana-4k") is k4


def test_unknown_names():
    assert find_spec("no-such-model") is None
    with pytest.raises(ModelNotFound, match="did you mean sana-1.6b"):
        get_spec("sana-1.7b")
    with pytest.raises(ModelNotFound, match="sana models list"):
        get_spec("completely-different")
