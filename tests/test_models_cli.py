"""`sana models` through the installed entry point, against temporary hub caches (never the network)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sana.hub import human_size
from sana.registry import all_specs, get_spec
from tests.cli_helpers import assert_one_line_error, run_sana
from tests.test_hub import COMMIT, blob_bytes, cache_repo, write_fake_pipeline

SANA_1600M = get_spec("sana-1.6b").repo
SANA_4K = get_spec("sana-1.6b-4k").repo
NO_NETWORK = "http://127.0.0.1:9"  # nothing listens there: connections are refused at once


@pytest.fixture
def cache(tmp_path) -> tuple[Path, dict]:
    """An empty hub cache and the environment that points the CLI at it."""
    hub_cache = tmp_path / "hf-home" / "hub"
    return hub_cache, {"HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": str(hub_cache), "HF_ENDPOINT": NO_NETWORK}


def table_rows(stdout: str) -> dict[str, list[str]]:
    """Rows of a rich table (the header row too), by their first cell."""
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.replace("┃", "│").split("│")[1:-1]]
        if cells:
            rows[cells[0]] = cells
    return rows


# ------------------------------------------------------------------------------------------- list

def test_list_shows_the_registry_and_what_is_cached(cache, tmp_path):
    hub_cache, env = cache
    cache_repo(hub_cache, SANA_1600M, write_fake_pipeline(tmp_path / "a"))
    partial = cache_repo(hub_cache, SANA_4K, write_fake_pipeline(tmp_path / "b"))
    (partial / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    cache_repo(hub_cache, "someone/sana-finetune", write_fake_pipeline(tmp_path / "c"))

    result = run_sana("models", "list", env=env)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    assert rows["name"] == ["name", "family", "resolution", "params", "downloaded", "on disk"]
    for spec in all_specs():
        assert rows[spec.name][1:3] == [spec.family, f"{spec.resolution} px"]
    assert rows["sana-1.6b"][3:] == ["1.60B", "yes", human_size(blob_bytes(hub_cache, SANA_1600M))]
    assert rows["sana-1.6b-4k"][4] == "partial"
    assert rows["sana-0.6b"][4:] == ["no", "-"]
    assert rows["video-2b-480p"][1] == "video" and rows["wm-2.6b"][1] == "wm"
    assert rows["someone/sana-finetune"][1] == "sana" and rows["someone/sana-finetune"][4] == "yes"


def test_list_with_no_cache_directory(cache):
    _, env = cache
    result = run_sana("models", "list", env=env)
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout)
    # Nothing is downloaded; only the built-in nano models, which ship inside the package, are there.
    assert {row[4] for name, row in rows.items() if name not in ("name", "nano", "nano-video")} == {"no"}
    assert rows["nano"][4] == rows["nano-video"][4] == "yes"


def test_list_as_json_has_what_the_table_shows(cache, tmp_path):
    hub_cache, env = cache
    cache_repo(hub_cache, SANA_1600M, write_fake_pipeline(tmp_path / "a"))
    partial = cache_repo(hub_cache, SANA_4K, write_fake_pipeline(tmp_path / "b"))
    (partial / "transformer" / "diffusion_pytorch_model.safetensors").unlink()

    listed = run_sana("models", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    entries = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    rows = table_rows(run_sana("models", "list", env=env).stdout)
    assert set(entries) == set(rows) - {"name"}  # the same rows, in JSON
    for name, entry in entries.items():
        assert [entry["family"], entry["downloaded"]] == [rows[name][1], rows[name][4]]
        assert (f"{entry['resolution']} px" if entry["resolution"] else "-") == rows[name][2]
    assert entries["sana-1.6b"] == {
        "name": "sana-1.6b", "kind": "model", "family": "sana", "repo": SANA_1600M,
        "aliases": list(get_spec("sana-1.6b").aliases), "description": get_spec("sana-1.6b").description,
        "resolution": 1024, "params": get_spec("sana-1.6b").transformer_params, "downloaded": "yes",
        "size_on_disk": blob_bytes(hub_cache, SANA_1600M)}
    assert entries["sana-1.6b-4k"]["downloaded"] == "partial" and entries["sana-0.6b"]["size_on_disk"] == 0
    assert entries["pickscore"]["kind"] == "reward" and entries["pickscore"]["processor_repo"]


def test_listing_does_not_import_torch(cache):
    """`sana models list` stays quick: the hub module needs neither torch nor diffusers."""
    _, env = cache
    code = ("import sys; import sana.hub as h; h.list_models(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env={**env, "PATH": ""}, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr


# ------------------------------------------------------------------------------------------- info

def test_info_of_a_registry_model_needs_no_network(cache):
    _, env = cache
    result = run_sana("models", "info", "sana-1.6b-4k", env=env)  # offline, endpoint unreachable, empty cache
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in ("sana-1.6b-4k", "sana-4k, sana-1600m-4k", SANA_4K, "SANA 1.0, 1.6B, 4096 px", "4096 px",
                 "SanaPipeline", "1,604,462,752", "2,614,341,888", "*.bf16.safetensors",
                 "no (sana models pull sana-1.6b-4k)"):
        assert text in out, text
    sizes = table_rows(out)
    assert sizes["transformer"][1:] == ["6.42 GB", "3.21 GB"]  # fp32, bf16
    assert sizes["total"][1:] == ["12.94 GB", "9.73 GB"]
    assert '"interpolation_scale": 2.0' in out and '"sample_size": 128' in out and '"flow_shift": 6.0' in out


def test_info_of_a_cached_registry_model_shows_where_it_is(cache, tmp_path):
    hub_cache, env = cache
    snapshot = cache_repo(hub_cache, SANA_1600M, write_fake_pipeline(tmp_path / "a"))
    result = run_sana("models", "info", "sana-1.6b", env=env)
    assert result.returncode == 0, result.stderr
    assert f"yes, {human_size(blob_bytes(hub_cache, SANA_1600M))} on disk" in result.stdout
    assert str(snapshot) in result.stdout


@pytest.mark.parametrize("how", ["directory", "repo-id"])
def test_info_of_a_local_directory_or_unregistered_repo(cache, tmp_path, how):
    hub_cache, env = cache
    source = write_fake_pipeline(tmp_path / "pipeline")
    if how == "repo-id":
        cache_repo(hub_cache, "someone/sana-finetune", source)
    result = run_sana("models", "info", str(source) if how == "directory" else "someone/sana-finetune", env=env)
    assert result.returncode == 0, result.stderr
    assert "SanaPipeline" in result.stdout and '"num_layers": 2' in result.stdout
    components = table_rows(result.stdout)
    assert components["transformer"][1] == "17" and components["text_encoder"][1] == "10"
    assert components["tokenizer"][1] == "-"


@pytest.mark.parametrize("name", ["sana-1.6b", "someone/sana-finetune"])
def test_info_of_a_partial_download_says_what_is_missing(cache, tmp_path, name):
    hub_cache, env = cache
    snapshot = cache_repo(hub_cache, get_spec(name).repo if "/" not in name else name, write_fake_pipeline(tmp_path / "a"))
    (snapshot / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    result = run_sana("models", "info", name, env=env)
    assert result.returncode == 0, result.stderr
    assert "missing files" in result.stdout and "vae weights" in result.stdout


def test_info_as_json(cache, tmp_path):
    """Every kind of NAME (registry model, downloaded or not, a directory, a reward model) as one JSON object."""
    hub_cache, env = cache
    snapshot = cache_repo(hub_cache, SANA_1600M, write_fake_pipeline(tmp_path / "a"))
    (snapshot / "vae" / "diffusion_pytorch_model.safetensors").unlink()

    def info(name):
        result = run_sana("models", "info", name, "--json", env=env)
        assert result.returncode == 0 and result.stderr == "", result.stderr
        return json.loads(result.stdout)

    spec = get_spec("sana-1.6b-4k")
    absent = info("sana-4k")
    assert {k: absent[k] for k in ("name", "repo", "family", "resolution", "pipeline", "downloaded", "path")} == {
        "name": "sana-1.6b-4k", "repo": SANA_4K, "family": spec.family, "resolution": 4096,
        "pipeline": "SanaPipeline", "downloaded": "no", "path": None}
    assert absent["params"] == spec.params and absent["defaults"]["flow_shift"] == 6.0
    assert absent["transformer"]["sample_size"] == 128
    assert absent["weights"]["bf16"] == {"files": "*.bf16.safetensors", "bytes": spec.weights["bf16"].bytes,
                                         "total_bytes": spec.weights["bf16"].total_bytes}

    partial = info("sana-1.6b")
    assert partial["downloaded"] == "partial" and partial["missing_files"] == ["vae weights"]
    assert partial["path"] == str(snapshot)
    table = run_sana("models", "info", "sana-1.6b", env=env).stdout
    assert f"partial, {human_size(partial['size_on_disk'])} on disk" in table

    local = info(str(write_fake_pipeline(tmp_path / "pipeline")))
    assert local["pipeline"] == "SanaPipeline" and local["missing_files"] == []
    assert {c["name"]: c["params"] for c in local["components"]}["transformer"] == 17
    assert local["transformer"]["num_layers"] == 2

    reward = info("clip")
    assert reward["kind"] == "reward" and reward["downloaded"] == "no" and reward["path"] is None
    assert assert_one_line_error(run_sana("models", "info", "sana-1.7b", "--json", env=env))


# ------------------------------------------------------------------------------------- path and rm

def test_path_prints_only_the_directory(cache, tmp_path):
    hub_cache, env = cache
    snapshot = cache_repo(hub_cache, SANA_1600M, write_fake_pipeline(tmp_path / "a"))
    local = write_fake_pipeline(tmp_path / "local")
    for arg, expected in (("sana-1.6b", snapshot), ("sana-1600m", snapshot), (SANA_1600M, snapshot),
                          (str(local), local.resolve()), (str(local / "transformer"), (local / "transformer").resolve())):
        result = run_sana("models", "path", arg, env=env)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{expected}\n" and result.stderr == ""


def test_rm_asks_unless_yes(cache, tmp_path):
    hub_cache, env = cache
    cache_repo(hub_cache, SANA_1600M, write_fake_pipeline(tmp_path / "a"))
    cache_repo(hub_cache, SANA_4K, write_fake_pipeline(tmp_path / "b"))
    freed = human_size(blob_bytes(hub_cache, SANA_1600M))

    # stdin is not a terminal here: no question can be asked, so nothing is deleted
    assert "pass --yes" in assert_one_line_error(run_sana("models", "rm", "sana-1.6b", env=env))
    assert run_sana("models", "path", "sana-1.6b", env=env).returncode == 0

    removed = run_sana("models", "rm", "sana-1.6b", "--yes", env=env)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.strip() == f"removed {SANA_1600M} ({freed} freed)"
    assert "is not downloaded" in assert_one_line_error(run_sana("models", "path", "sana-1.6b", env=env))
    assert "not downloaded" in assert_one_line_error(run_sana("models", "rm", "sana-1.6b", "--yes", env=env))
    assert run_sana("models", "path", "sana-4k", env=env).returncode == 0


def test_pull_command_shows_progress_and_prints_the_path(tmp_path, monkeypatch):
    """In-process, with the hub client replaced (no network here): the command's own rendering and result."""
    import huggingface_hub.constants
    from typer.testing import CliRunner

    from sana_cli.app import app
    from tests.test_hub import FakeHub, repo_files

    hub_cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    source = write_fake_pipeline(tmp_path / "src", transformer_variant="bf16")
    fake = FakeHub(hub_cache, SANA_4K, repo_files(source), delay=0.05).install(monkeypatch)
    result = CliRunner().invoke(app, ["models", "pull", "sana-4k", "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    snapshot = hub_cache / f"models--{SANA_4K.replace('/', '--')}" / "snapshots" / COMMIT
    assert result.stdout.strip().splitlines()[-1] == str(snapshot)
    assert "transformer/diffusion_pytorch_model.bf16.safetensors" in fake.calls[0]["allow_patterns"]
    assert f"{len(fake.calls[0]['allow_patterns'])}/{len(fake.calls[0]['allow_patterns'])} files" in result.stderr


# -------------------------------------------------------------------------- the engine uses the cache

@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from tests.tiny_pipeline import build_pipeline

    path = tmp_path_factory.mktemp("tiny")
    build_pipeline(path, "sana")
    shutil.rmtree(path / "_tokenizer_build", ignore_errors=True)
    return path


def test_gen_runs_from_the_hub_cache(cache, tmp_path, tiny_pipeline):
    hub_cache, env = cache
    cache_repo(hub_cache, SANA_1600M, tiny_pipeline)
    out = tmp_path / "cached.png"
    gen = run_sana("gen", "a dog", "--model", "sana-1.6b", "--res", "64", "--steps", "2", "--seed", "1", "-o", str(out),
                   "--device", "cpu", "--dtype", "fp32", env=env)
    assert gen.returncode == 0, gen.stderr
    meta = json.loads(run_sana("info", str(out), "--json").stdout)
    assert meta["model_repo"] == SANA_1600M and meta["model_revision"] == COMMIT


# ------------------------------------------------------------------------------------------ errors

def _not_a_model(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.txt").write_text("meow")
    return photos


def _cached_without_vae_weights(tmp_path: Path, hub_cache: Path) -> None:
    snapshot = cache_repo(hub_cache, SANA_1600M, write_fake_pipeline(tmp_path / "a"))
    (snapshot / "vae" / "diffusion_pytorch_model.safetensors").unlink()


def _finetune_run(tmp_path: Path) -> Path:
    """A full fine-tuning run folder: its settings, and the exported model inside it."""
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    (run / "train_config.json").write_text('{"mode": "full"}')
    (run / "model" / "model_index.json").write_text("{}")
    return run


ERRORS = {
    # id: (arguments, set-up, environment overrides, expected text)
    "unknown-model": (lambda t, c: ("models", "info", "sana-1.7b"), {}, "unknown model 'sana-1.7b' (did you mean"),
    "unknown-model-path": (lambda t, c: ("models", "path", "no-such-model"), {}, "see `sana models list`"),
    "unknown-model-pull": (lambda t, c: ("models", "pull", "no-such-model"), {}, "unknown model"),
    "not-downloaded": (lambda t, c: ("models", "path", "sana-1.6b"), {}, "run: sana models pull sana-1.6b"),
    "not-a-model": (lambda t, c: ("models", "path", str(_not_a_model(t))), {},
                    "is not a model directory: no model_index.json or config.json"),
    "not-a-model-info": (lambda t, c: ("models", "info", str(_not_a_model(t))), {}, "is not a model directory"),
    "not-a-model-gen": (lambda t, c: ("gen", "x", "--model", str(_not_a_model(t)), "--device", "cpu"), {},
                        "is not a model directory"),
    "a-run-as-model": (lambda t, c: ("gen", "x", "--model", str(_finetune_run(t)), "--device", "cpu"), {},
                       "is a sana finetune run folder, not a model directory (a full fine-tuning run's model is "),
    "no-such-dir": (lambda t, c: ("models", "path", str(t / "no" / "such" / "dir")), {}, "no such directory"),
    "missing-files": (lambda t, c: (_cached_without_vae_weights(t, c), ("models", "path", "sana-1.6b"))[1], {},
                      "sana-1.6b is missing local files: vae weights (run: sana models pull sana-1.6b)"),
    "missing-files-gen": (lambda t, c: (_cached_without_vae_weights(t, c), ("gen", "x", "--model", SANA_1600M))[1],
                          {}, "missing local files: vae weights"),
    "info-not-downloaded": (lambda t, c: ("models", "info", "someone/other"), {}, "run: sana models pull someone/other"),
    "offline-pull": (lambda t, c: ("models", "pull", "sana-1.6b"), {"HF_HUB_OFFLINE": "1"},
                     "cannot pull sana-1.6b: offline mode is on (HF_HUB_OFFLINE=1)"),
    "no-network-pull": (lambda t, c: ("models", "pull", "sana-1.6b"), {"HF_HUB_OFFLINE": "0"},
                        f"cannot pull sana-1.6b: {NO_NETWORK} cannot be reached"),
    "no-network-pull-repo": (lambda t, c: ("models", "pull", "someone/other", "--precision", "fp16"),
                             {"HF_HUB_OFFLINE": "0"}, "cannot be reached"),
    "pull-a-directory": (lambda t, c: ("models", "pull", str(write_fake_pipeline(t / "p"))), {"HF_HUB_OFFLINE": "0"},
                         "is a local path, not a hub model"),
    "bad-precision": (lambda t, c: ("models", "pull", "sana-1.6b", "--precision", "fp8"), {}, "unknown precision 'fp8'"),
    "rm-not-cached": (lambda t, c: ("models", "rm", "sana-4k", "--yes"), {}, "is not downloaded"),
    # not downloaded is said first: asking to confirm a deletion that cannot happen would mislead
    "rm-not-cached-unconfirmed": (lambda t, c: ("models", "rm", "sana-4k"), {}, "is not downloaded"),
}


@pytest.mark.parametrize("name", ["nano-video", "nano"])
def test_pulling_a_built_in_model_succeeds_with_nothing_to_do(cache, name):
    """`sana models pull X && sana video -m X` works for the models in the package too: a notice, the folder, exit 0
    (offline, and with no hub cache)."""
    from sana.hub import resolve_model

    result = run_sana("models", "pull", name, env={**cache[1], "HF_HUB_OFFLINE": "1"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"note: {name} ships inside the package: nothing to pull" in result.stderr
    assert result.stdout.strip() == str(resolve_model(name).path)


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line(cache, tmp_path, case):
    hub_cache, env = cache
    make_args, overrides, expected = ERRORS[case]
    result = run_sana(*make_args(tmp_path, hub_cache), env={**env, **overrides}, timeout=60)
    assert expected in assert_one_line_error(result)
    assert result.stdout == ""


@pytest.mark.parametrize("case", ["unknown-model-pull", "offline-pull", "pull-a-directory"])
def test_pull_errors_are_the_only_output(cache, tmp_path, case):
    """No blank line from the download's progress display, which never started, comes before the error."""
    hub_cache, env = cache
    make_args, overrides, expected = ERRORS[case]
    result = run_sana(*make_args(tmp_path, hub_cache), env={**env, **overrides}, timeout=60)
    assert result.returncode != 0 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, \
        repr(result.stderr)
    assert expected in result.stderr


@pytest.mark.parametrize("case", ["unknown-model", "missing-files", "offline-pull", "no-network-pull"])
def test_verbose_adds_the_traceback(cache, tmp_path, case):
    hub_cache, env = cache
    make_args, overrides, expected = ERRORS[case]
    result = run_sana("--verbose", *make_args(tmp_path, hub_cache), env={**env, **overrides}, timeout=60)
    assert result.returncode != 0 and "Traceback" in result.stderr and expected in result.stderr


def test_a_reward_model_is_shown_and_removed_by_its_name(cache, tmp_path):
    """`models list` names the reward models (clip, pickscore): `info` and `rm` take those names too."""
    hub_cache, env = cache
    source = tmp_path / "clip"
    source.mkdir()
    for name in ("config.json", "tokenizer.json", "preprocessor_config.json"):
        (source / name).write_text("{}")
    (source / "model.safetensors").write_bytes(b"\0" * 64)
    cache_repo(hub_cache, "openai/clip-vit-large-patch14", source)

    shown = run_sana("models", "info", "clip", env=env)
    assert shown.returncode == 0, shown.stderr
    rows = {line.split(None, 1)[0]: line.split(None, 1)[1].strip() for line in shown.stdout.splitlines() if line.strip()}
    assert rows["repos"] == "openai/clip-vit-large-patch14" and rows["downloaded"].startswith("yes")
    assert "openai--clip-vit-large-patch14" in rows["path"]
    removed = run_sana("models", "rm", "clip", "--yes", env=env)
    assert removed.returncode == 0, removed.stderr
    assert removed.stdout.startswith("removed openai/clip-vit-large-patch14")
    assert "no (sana models pull clip)" in run_sana("models", "info", "clip", env=env).stdout
    assert "not downloaded" in assert_one_line_error(run_sana("models", "rm", "pickscore", "--yes", env=env))
