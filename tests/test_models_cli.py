"""The registry, the hub cache and `sana models`, through the installed entry point."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from sana.hub import select_files
from sana.models.transformer import TransformerConfig
from sana.registry import all_specs, find_spec, get_spec
from tests.cli_helpers import assert_one_line_error, run_sana
from tests.tiny_pipeline import build_pipeline

REPO = "Efficient-Large-Model/Sana_1600M_1024px_diffusers"  # the repo of sana-1.6b


def populate_cache(hub_cache: Path, repo: str, source: Path, commit: str = "a" * 40) -> Path:
    """Lay `source` out in the hub cache the way huggingface_hub does: blobs, a snapshot of links, refs/main."""
    root = hub_cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    build_pipeline(path, "sana")
    shutil.rmtree(path / "_tokenizer_build")
    return path


@pytest.fixture
def hub_env(tmp_path, tiny_dir):
    cache = tmp_path / "hub"
    snapshot = populate_cache(cache, REPO, tiny_dir)
    return {"HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf-home")}, snapshot


# -- registry ------------------------------------------------------------------------------------------------

def test_every_preset_is_complete_and_unique():
    specs = all_specs()
    assert len(specs) >= 14
    keys = [k.lower() for s in specs for k in (s.name, s.repo, *s.aliases)]
    assert len(keys) == len(set(keys))
    for spec in specs:
        assert find_spec(spec.name) is spec and find_spec(spec.repo) is spec
        assert all(find_spec(alias) is spec for alias in spec.aliases)
        assert spec.transformer_params > 0 and spec.resolution > 0
        for weights in spec.weights.values():
            assert weights.total_bytes > 0 and all(v > 0 for v in weights.bytes.values())
        if spec.is_image:
            cfg = TransformerConfig.from_dict(spec.transformer)
            assert cfg.sample_size * 32 == spec.resolution
            assert {"steps", "guidance", "sampler"} <= set(spec.defaults)


def test_known_facts_of_the_presets():
    k4 = get_spec("sana-4k")
    assert k4.name == "sana-1.6b-4k"
    assert k4.transformer["interpolation_scale"] == 2.0 and k4.transformer["sample_size"] == 128
    assert get_spec("sana1.5-4.8b").transformer["num_layers"] == 60
    sprint = get_spec("sprint-1.6b")
    assert sprint.transformer["guidance_embeds"] and sprint.transformer["qk_norm"] == "rms_norm_across_heads"
    assert sprint.defaults["sampler"] == "scm" and sprint.defaults["steps"] == 2
    assert get_spec("Sana_1600M_1024px_diffusers") is get_spec("sana-1.6b")


def test_select_files_takes_only_one_precision():
    files = [
        "model_index.json", "scheduler/scheduler_config.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer.model",
        "transformer/config.json", "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.json", "transformer/diffusion_pytorch_model.fp16.safetensors",
        "text_encoder/config.json", "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
        "text_encoder/model.safetensors.index.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.bin", ".gitattributes", "README.md",
    ]
    fp16 = select_files(files, "fp16")
    assert "transformer/diffusion_pytorch_model.fp16.safetensors" in fp16
    assert not any("00001-of-00002" in f for f in fp16 if f.startswith("transformer/"))
    assert "text_encoder/model-00001-of-00002.safetensors" in fp16  # no fp16 variant there: the default files
    assert "vae/diffusion_pytorch_model.bin" not in fp16 and ".gitattributes" not in fp16
    default = select_files(files, None)
    assert "transformer/diffusion_pytorch_model-00002-of-00002.safetensors" in default
    assert "transformer/diffusion_pytorch_model.fp16.safetensors" not in default


# -- the CLI ---------------------------------------------------------------------------------------------------

def test_list_shows_the_registry_and_the_cache(hub_env):
    env, _ = hub_env
    result = run_sana("models", "list", env=env)
    assert result.returncode == 0, result.stderr
    for spec in all_specs():
        assert spec.name in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.split("│")[0].strip() == "sana-1.6b")
    assert "yes" in row and "GB" in row
    other = next(line for line in result.stdout.splitlines() if line.split("│")[0].strip() == "sana-1.6b-4k")
    assert "no" in other


def test_info_works_offline(tmp_path):
    result = run_sana("models", "info", "sana-1.6b-4k", env={"HF_HUB_CACHE": str(tmp_path), "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert result.returncode == 0, result.stderr
    assert '"interpolation_scale": 2.0' in result.stdout and '"sample_size": 128' in result.stdout
    assert "Efficient-Large-Model/Sana_1600M_4Kpx_BF16_diffusers" in result.stdout
    assert "3.21" in result.stdout and "9.73" in result.stdout  # bf16 transformer and total, GB


def test_info_and_path_of_a_local_directory(tiny_dir):
    info = run_sana("models", "info", str(tiny_dir))
    assert info.returncode == 0 and "SanaPipeline" in info.stdout and '"num_layers": 3' in info.stdout
    path = run_sana("models", "path", str(tiny_dir))
    assert path.returncode == 0 and Path(path.stdout.strip()) == tiny_dir.resolve()


def test_path_and_gen_from_the_cache_then_rm(hub_env, tmp_path):
    env, snapshot = hub_env
    for name in ("sana-1.6b", REPO):
        result = run_sana("models", "path", name, env=env)
        assert result.returncode == 0, result.stderr
        assert Path(result.stdout.strip()) == snapshot
    out = tmp_path / "cached.png"
    gen = run_sana("gen", "a dog", "--model", "sana-1.6b", "--res", "64", "--steps", "2", "--seed", "1", "-o", str(out),
                   "--device", "cpu", "--dtype", "fp32", env=env)
    assert gen.returncode == 0, gen.stderr
    meta = json.loads(run_sana("info", str(out), "--json").stdout)
    assert meta["model_repo"] == REPO and meta["model_revision"] == "a" * 40
    assert_one_line_error(run_sana("models", "rm", "sana-1.6b", env=env))  # no --yes, no terminal
    removed = run_sana("models", "rm", "sana-1.6b", "--yes", env=env)
    assert removed.returncode == 0, removed.stderr
    assert "not downloaded" in assert_one_line_error(run_sana("models", "path", "sana-1.6b", env=env))
    assert "not in the cache" in assert_one_line_error(run_sana("models", "rm", "sana-1.6b", "--yes", env=env))


def test_missing_local_files(hub_env):
    env, snapshot = hub_env
    for weights in (snapshot / "vae").glob("*.safetensors"):
        weights.unlink()
    message = assert_one_line_error(run_sana("models", "path", "sana-1.6b", env=env))
    assert "missing local files" in message and "vae" in message and "sana models pull" in message


@pytest.mark.parametrize("args,expected", [
    (("models", "info", "sana-1.7b"), "did you mean"),
    (("models", "path", "no-such-model"), "unknown model"),
    (("models", "path", "./no/such/dir"), "no such model directory"),
    (("models", "pull", "sana-1.6b", "--precision", "fp8"), "unknown precision"),
], ids=["suggestion", "unknown", "missing-dir", "precision"])
def test_errors_are_one_line(args, expected, tmp_path):
    assert expected in assert_one_line_error(run_sana(*args, env={"HF_HUB_CACHE": str(tmp_path)}))


def test_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.txt").write_text("x")
    assert "not a model directory" in assert_one_line_error(run_sana("models", "path", str(tmp_path / "photos")))
    assert "not a model directory" in assert_one_line_error(
        run_sana("gen", "x", "--model", str(tmp_path / "photos"), "--device", "cpu"))


def test_offline_pull_is_one_line(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    assert "HF_HUB_OFFLINE" in assert_one_line_error(run_sana("models", "pull", "sana-1.6b", env=env))
    env = {"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}
    assert "cannot reach the hub" in assert_one_line_error(run_sana("models", "pull", "sana-1.6b", env=env, timeout=60))


def test_verbose_shows_the_traceback():
    result = run_sana("--verbose", "models", "path", "no-such-model")
    assert result.returncode != 0 and "Traceback" in result.stderr
