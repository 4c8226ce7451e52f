"""sana.hub in-process: file choice per precision, resolving, the hub cache (a temporary one laid out as
huggingface_hub lays it out), removal, and pull with the hub client replaced by fakes."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from safetensors.numpy import save_file

from sana import hub
from sana.errors import ModelNotFound, OfflineError, SanaError
from sana.registry import get_spec

SANA_1600M = get_spec("sana-1.6b").repo
SANA_4K = get_spec("sana-1.6b-4k").repo
COMMIT = "a" * 40

# ------------------------------------------------------------------------------------------- helpers

MODEL_INDEX = {
    "_class_name": "SanaPipeline", "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": ["transformers", "Gemma2Model"],
    "tokenizer": ["transformers", "GemmaTokenizerFast"], "transformer": ["diffusers", "SanaTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderDC"], "safety_checker": [None, None],
}
TRANSFORMER_PARAMS = 3 * 4 + 5
TEXT_ENCODER_PARAMS = 2 * 3 + 4


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def write_fake_pipeline(root: Path, *, transformer_variant: str | None = None, default_transformer: bool = True,
                        class_name: str = "SanaPipeline") -> Path:
    """A diffusers-format SANA folder with tiny safetensors: sharded text encoder, optional variant files."""
    _write_json(root / "model_index.json", {**MODEL_INDEX, "_class_name": class_name})
    _write_json(root / "transformer" / "config.json", {"_class_name": "SanaTransformer2DModel", "num_layers": 2,
                                                       "sample_size": 32, "interpolation_scale": None})
    transformer = {"proj.weight": np.ones((3, 4), np.float32), "proj.bias": np.ones(5, np.float32)}
    if default_transformer:
        save_file(transformer, str(root / "transformer" / "diffusion_pytorch_model.safetensors"))
    if transformer_variant:
        save_file({k: v.astype(np.float16) for k, v in transformer.items()},
                  str(root / "transformer" / f"diffusion_pytorch_model.{transformer_variant}.safetensors"))
    _write_json(root / "text_encoder" / "config.json", {"hidden_size": 4})
    save_file({"a": np.ones((2, 3), np.float32)}, str(root / "text_encoder" / "model-00001-of-00002.safetensors"))
    save_file({"b": np.ones(4, np.float32)}, str(root / "text_encoder" / "model-00002-of-00002.safetensors"))
    _write_json(root / "text_encoder" / "model.safetensors.index.json",
                {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                "b": "model-00002-of-00002.safetensors"}})
    _write_json(root / "vae" / "config.json", {"latent_channels": 32})
    save_file({"v": np.ones((2, 2), np.float32)}, str(root / "vae" / "diffusion_pytorch_model.safetensors"))
    _write_json(root / "tokenizer" / "tokenizer_config.json", {"model_max_length": 300})
    _write_json(root / "scheduler" / "scheduler_config.json", {"shift": 3.0})
    return root


def cache_repo(hub_cache: Path, repo: str, source: Path, commit: str = COMMIT, ref: str | None = "main") -> Path:
    """Lay `source` out as huggingface_hub does: content-addressed blobs, a snapshot of relative links, a ref."""
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
    if ref:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snapshot


def blob_bytes(hub_cache: Path, repo: str) -> int:
    blobs = hub_cache / f"models--{repo.replace('/', '--')}" / "blobs"
    return sum(p.stat().st_size for p in blobs.iterdir())


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache that huggingface_hub and sana.hub both use for this test."""
    import huggingface_hub.constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def pipeline_dir(tmp_path) -> Path:
    return write_fake_pipeline(tmp_path / "pipeline")


# ------------------------------------------------------------------------------------- file choice

SANA_4K_FILES = [
    ".gitattributes", "README.md", "asset/logo.png", "asset/configs/extra.json", "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model-00001-of-00002.safetensors",
    "text_encoder/model-00002-of-00002.safetensors", "text_encoder/model.safetensors.index.json",
    "text_encoder/model.bf16-00001-of-00002.safetensors", "text_encoder/model.bf16-00002-of-00002.safetensors",
    "text_encoder/model.safetensors.index.bf16.json",
    "tokenizer/special_tokens_map.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer.model",
    "tokenizer/tokenizer_config.json",
    "transformer/config.json", "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
    "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
    "transformer/diffusion_pytorch_model.safetensors.index.json",
    "transformer/diffusion_pytorch_model.bf16.safetensors", "transformer/diffusion_pytorch_model.bin",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_flax_model.msgpack",
]
SMALL_FILES = [
    "model_index.json", "scheduler/scheduler_config.json", "text_encoder/config.json",
    "tokenizer/special_tokens_map.json", "tokenizer/tokenizer.json", "tokenizer/tokenizer.model",
    "tokenizer/tokenizer_config.json", "transformer/config.json", "vae/config.json",
]


def test_select_files_takes_the_variant_where_a_folder_has_it():
    assert hub.select_files(SANA_4K_FILES, "bf16") == sorted(SMALL_FILES + [
        "text_encoder/model.bf16-00001-of-00002.safetensors", "text_encoder/model.bf16-00002-of-00002.safetensors",
        "text_encoder/model.safetensors.index.bf16.json", "transformer/diffusion_pytorch_model.bf16.safetensors",
        "vae/diffusion_pytorch_model.safetensors",  # the VAE has no bf16 files: its default ones
    ])


def test_select_files_default_precision_takes_no_variant_and_no_pickles():
    assert hub.select_files(SANA_4K_FILES, None) == sorted(SMALL_FILES + [
        "text_encoder/model-00001-of-00002.safetensors", "text_encoder/model-00002-of-00002.safetensors",
        "text_encoder/model.safetensors.index.json",
        "transformer/diffusion_pytorch_model-00001-of-00002.safetensors",
        "transformer/diffusion_pytorch_model-00002-of-00002.safetensors",
        "transformer/diffusion_pytorch_model.safetensors.index.json",
        "vae/diffusion_pytorch_model.safetensors",
    ])
    # A variant no folder has falls back to the default files everywhere.
    assert hub.select_files(SANA_4K_FILES, "fp16") == hub.select_files(SANA_4K_FILES, None)


def test_select_files_legacy_names_pickles_and_variant_only_folders():
    files = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model-00001-of-00002.fp16.safetensors",
             "unet/diffusion_pytorch_model-00002-of-00002.fp16.safetensors",
             "unet/diffusion_pytorch_model.safetensors.fp16.index.json", "unet/diffusion_pytorch_model.safetensors",
             "old/config.json", "old/pytorch_model.bin", "old/pytorch_model.fp16.bin",
             "only/config.json", "only/model.bf16.safetensors", "only/model.fp16.safetensors"]
    chosen = hub.select_files(files, "fp16")
    assert [f for f in chosen if f.startswith("unet/") and "model" in f] == [
        "unet/diffusion_pytorch_model-00001-of-00002.fp16.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.fp16.safetensors",
        "unet/diffusion_pytorch_model.safetensors.fp16.index.json"]
    assert "old/pytorch_model.fp16.bin" in chosen and "old/pytorch_model.bin" not in chosen  # .bin only without safetensors
    assert [f for f in hub.select_files(files, None) if f.startswith("only/")] == [
        "only/config.json", "only/model.bf16.safetensors"]  # one precision, never both


@pytest.mark.parametrize("name,variant", [
    ("transformer/diffusion_pytorch_model.safetensors", None),
    ("transformer/diffusion_pytorch_model.bf16.safetensors", "bf16"),
    ("text_encoder/model-00001-of-00004.safetensors", None),
    ("text_encoder/model.fp16-00001-of-00004.safetensors", "fp16"),
    ("text_encoder/model-00001-of-00004.fp16.safetensors", "fp16"),
    ("text_encoder/model.safetensors.index.json", None),
    ("text_encoder/model.safetensors.index.bf16.json", "bf16"),
    ("text_encoder/model.safetensors.fp16.index.json", "fp16"),
    ("text_encoder/pytorch_model.bin.index.fp16.json", "fp16"),
    ("vae/config.json", None),
])
def test_weight_variant(name, variant):
    assert hub.weight_variant(name) == variant


# --------------------------------------------------------------------------------------- resolving

def test_resolve_registry_names_and_repo_ids_from_the_cache(hub_cache, pipeline_dir):
    snapshot = cache_repo(hub_cache, SANA_1600M, pipeline_dir)
    spec = get_spec("sana-1.6b")
    for arg, source in (("sana-1.6b", "registry"), (spec.aliases[0], "registry"), (SANA_1600M, "repo"),
                        (SANA_1600M.lower(), "repo")):
        resolved = hub.resolve_model(arg)
        assert (resolved.path, resolved.spec, resolved.repo, resolved.revision, resolved.source) == \
            (snapshot, spec, SANA_1600M, COMMIT, source), arg


def test_resolve_follows_refs_main(hub_cache, tmp_path, pipeline_dir):
    cache_repo(hub_cache, SANA_1600M, pipeline_dir, commit="b" * 40)
    newer = cache_repo(hub_cache, SANA_1600M, write_fake_pipeline(tmp_path / "newer"), commit="c" * 40)
    assert hub.resolve_model("sana-1.6b").revision == "c" * 40 and hub.resolve_model("sana-1.6b").path == newer
    (hub_cache / f"models--{SANA_1600M.replace('/', '--')}" / "refs" / "main").write_text("b" * 40)
    assert hub.resolve_model("sana-1.6b").revision == "b" * 40


def test_resolve_without_a_ref_takes_the_snapshot(hub_cache, pipeline_dir):
    snapshot = cache_repo(hub_cache, "someone/custom-sana", pipeline_dir, ref=None)
    resolved = hub.resolve_model("someone/custom-sana")
    assert resolved.path == snapshot and resolved.spec is None and resolved.source == "repo"


def test_resolve_uncached_says_how_to_pull(hub_cache):
    with pytest.raises(ModelNotFound, match=r"is not downloaded \(run: sana models pull sana-1.6b\)"):
        hub.resolve_model("sana-1.6b")
    with pytest.raises(ModelNotFound, match="sana models pull someone/other"):
        hub.resolve_model("someone/other")
    with pytest.raises(ModelNotFound, match="did you mean"):
        hub.resolve_model("sana-1.7b")


@pytest.mark.parametrize("damage,expected", [
    (lambda s: [p.unlink() for p in (s / "vae").glob("*.safetensors")], "vae weights"),
    (lambda s: (s / "text_encoder" / "model-00002-of-00002.safetensors").unlink(),
     "text_encoder/model-00002-of-00002.safetensors"),
    (lambda s: [p.unlink() for p in (s / "tokenizer").iterdir()], "tokenizer/"),
    # a snapshot link whose blob is gone (an interrupted or half-deleted cache)
    (lambda s: (s / "transformer" / "diffusion_pytorch_model.safetensors").resolve().unlink(), "transformer weights"),
], ids=["vae-weights", "shard", "tokenizer", "dangling-link"])
def test_partial_downloads_name_what_is_missing(hub_cache, pipeline_dir, damage, expected):
    snapshot = cache_repo(hub_cache, SANA_1600M, pipeline_dir)
    damage(snapshot)
    with pytest.raises(ModelNotFound, match="missing local files") as caught:
        hub.resolve_model("sana-1.6b")
    assert expected in str(caught.value) and "run: sana models pull sana-1.6b" in str(caught.value)


def test_resolve_with_a_precision_needs_its_files(hub_cache, tmp_path):
    # The 4K preset's bf16 weights are *.bf16.safetensors; its VAE has only default files.
    bf16_only = write_fake_pipeline(tmp_path / "bf16", transformer_variant="bf16", default_transformer=False)
    snapshot = cache_repo(hub_cache, SANA_4K, bf16_only)
    assert hub.resolve_model("sana-1.6b-4k", precision="bf16").path == snapshot
    assert hub.resolve_model("sana-1.6b-4k").path == snapshot
    with pytest.raises(ModelNotFound, match=r"transformer default weights.*--precision fp32"):
        hub.resolve_model("sana-1.6b-4k", precision="fp32")
    with pytest.raises(SanaError, match="unknown precision"):
        hub.resolve_model("sana-1.6b-4k", precision="fp8")


def test_directories(tmp_path, pipeline_dir):
    resolved = hub.resolve_model(str(pipeline_dir))
    assert (resolved.path, resolved.spec, resolved.repo, resolved.source) == (pipeline_dir.resolve(), None, None,
                                                                              "directory")
    # A bare transformer folder (config.json beside its weights) is a model too.
    assert hub.resolve_model(str(pipeline_dir / "transformer")).path == (pipeline_dir / "transformer").resolve()

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"jpeg")
    for not_a_model in (photos, photos / "cat.jpg"):
        with pytest.raises(ModelNotFound, match="is not a model directory: no model_index.json or config.json"):
            hub.resolve_model(str(not_a_model))
    with pytest.raises(ModelNotFound, match="no such directory"):
        hub.resolve_model(str(tmp_path / "nowhere" / "model"))

    for path in (pipeline_dir / "vae").iterdir():
        path.unlink()
    (pipeline_dir / "vae").rmdir()
    with pytest.raises(ModelNotFound, match="missing local files: vae/"):
        hub.resolve_model(str(pipeline_dir))


def test_local_components_and_config(pipeline_dir):
    components = {c.name: c for c in hub.local_components(pipeline_dir)}
    assert set(components) == {"scheduler", "text_encoder", "tokenizer", "transformer", "vae"}
    assert components["transformer"].params == TRANSFORMER_PARAMS
    assert components["text_encoder"].params == TEXT_ENCODER_PARAMS  # both shards
    assert components["tokenizer"].params is None
    on_disk = sum(p.stat().st_size for p in (pipeline_dir / "vae").iterdir())
    assert components["vae"].size_on_disk == on_disk
    assert hub.transformer_config(pipeline_dir)["num_layers"] == 2


# -------------------------------------------------------------------------------- listing and rm

def test_list_models_reports_the_cache(hub_cache, tmp_path, pipeline_dir):
    cache_repo(hub_cache, SANA_1600M, pipeline_dir)
    partial = cache_repo(hub_cache, SANA_4K, write_fake_pipeline(tmp_path / "4k"))
    (partial / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    cache_repo(hub_cache, "someone/my-sana-finetune", write_fake_pipeline(tmp_path / "ft"))
    cache_repo(hub_cache, "someone/not-sana", write_fake_pipeline(tmp_path / "sd", class_name="StableDiffusionPipeline"))

    entries = {e.name: e for e in hub.list_models()}
    assert entries["sana-1.6b"].status == "yes"
    assert entries["sana-1.6b"].size_on_disk == blob_bytes(hub_cache, SANA_1600M) > 0
    assert entries["sana-1.6b-4k"].status == "partial"
    assert entries["sana-0.6b"].status == "no" and entries["sana-0.6b"].size_on_disk == 0
    assert entries["someone/my-sana-finetune"].family == "sana" and entries["someone/my-sana-finetune"].spec is None
    assert "someone/not-sana" not in entries
    assert [e.name for e in hub.list_models()][:4] == ["nano", "sana-0.6b-512", "sana-0.6b", "sana-1.6b-512"]


def test_list_models_with_no_cache_at_all(hub_cache):
    assert not hub_cache.exists()
    # the nano models are in the package, not the cache
    assert {e.status for e in hub.list_models() if e.name not in ("nano", "nano-video")} == {"no"}


def test_remove_frees_every_revision(hub_cache, tmp_path, pipeline_dir):
    cache_repo(hub_cache, SANA_1600M, pipeline_dir, commit="b" * 40)
    cache_repo(hub_cache, SANA_1600M, write_fake_pipeline(tmp_path / "v2", transformer_variant="fp16"), commit="c" * 40)
    cache_repo(hub_cache, SANA_4K, pipeline_dir)
    expected = blob_bytes(hub_cache, SANA_1600M)

    assert hub.remove("sana-1.6b") == (SANA_1600M, expected)
    assert not (hub_cache / f"models--{SANA_1600M.replace('/', '--')}").exists()
    assert hub.resolve_model("sana-1.6b-4k").repo == SANA_4K  # the other repo is untouched
    with pytest.raises(ModelNotFound, match="is not downloaded"):
        hub.resolve_model("sana-1.6b")
    with pytest.raises(ModelNotFound, match="not in the hub cache"):
        hub.remove("sana-1.6b")


def test_remove_touches_no_other_repo_with_the_same_commit_hash(hub_cache, pipeline_dir):
    cache_repo(hub_cache, SANA_1600M, pipeline_dir)
    cache_repo(hub_cache, SANA_4K, pipeline_dir)  # same commit hash: only hand-made caches do this
    expected = blob_bytes(hub_cache, SANA_1600M)
    assert hub.remove(SANA_1600M) == (SANA_1600M, expected)
    assert hub.resolve_model("sana-1.6b-4k").revision == COMMIT


def test_remove_an_interrupted_pull_without_snapshots(hub_cache):
    folder = hub_cache / f"models--{SANA_4K.replace('/', '--')}"
    (folder / "blobs").mkdir(parents=True)
    (folder / "blobs" / ("f" * 64 + ".incomplete")).write_bytes(b"x" * 1000)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    with pytest.raises(ModelNotFound, match="only partly downloaded"):
        hub.resolve_model("sana-4k")
    assert hub.remove("sana-4k") == (SANA_4K, 1000 + len(COMMIT))
    assert not folder.exists()


def test_remove_refuses_local_paths(pipeline_dir):
    with pytest.raises(SanaError, match="is a local path"):
        hub.remove(str(pipeline_dir))


def test_human_units():
    assert hub.human_size(9_727_310_380) == "9.73 GB" and hub.human_size(38_700_000) == "38.70 MB"
    assert hub.human_size(512) == "512 B" and hub.human_size(None) == "-"
    assert hub.human_count(1_604_462_752) == "1.60B" and hub.human_count(312_250_275) == "312M"
    assert hub.human_count(4_100) == "4.10k" and hub.human_count(None) == "-"


# ------------------------------------------------------------------------------- pull with fakes

class FakeHub:
    """model_info and snapshot_download over an in-memory repo, writing the cache as huggingface_hub does."""

    def __init__(self, hub_cache: Path, repo: str, files: dict[str, bytes], delay: float = 0.0):
        self.hub_cache, self.repo, self.files, self.delay = hub_cache, repo, files, delay
        self.calls: list[dict] = []

    def model_info(self, repo_id, files_metadata=False, **_):  # patched onto HfApi as a bound method
        assert repo_id == self.repo and files_metadata
        siblings = [SimpleNamespace(rfilename=name, size=len(data), blob_id=None,
                                    lfs=SimpleNamespace(sha256=hashlib.sha256(data).hexdigest()))
                    for name, data in self.files.items()]
        return SimpleNamespace(sha=COMMIT, siblings=siblings)

    def snapshot_download(self, repo_id, *, allow_patterns, cache_dir, tqdm_class=None, **kwargs):
        self.calls.append({"repo_id": repo_id, "allow_patterns": allow_patterns, "tqdm_class": tqdm_class, **kwargs})
        root = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
        snapshot = root / "snapshots" / COMMIT
        for name in allow_patterns:
            data = self.files[name]
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            partial = blob.with_name(blob.name + ".incomplete")
            partial.write_bytes(data[: len(data) // 2])  # half a file on disk, as a resumed download has
            time.sleep(self.delay)
            partial.write_bytes(data)
            partial.rename(blob)
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / "main").write_text(COMMIT)
        return str(snapshot)

    def install(self, monkeypatch):
        import huggingface_hub

        monkeypatch.setattr(huggingface_hub.HfApi, "model_info", self.model_info)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", self.snapshot_download)
        return self


def repo_files(source: Path, extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    files = {p.relative_to(source).as_posix(): p.read_bytes() for p in source.rglob("*") if p.is_file()}
    return {**files, "README.md": b"# card", **(extra or {})}


def test_pull_fetches_one_precision_and_reports_progress(hub_cache, tmp_path, monkeypatch):
    source = write_fake_pipeline(tmp_path / "src", transformer_variant="bf16")
    fake = FakeHub(hub_cache, SANA_4K, repo_files(source, {"transformer/diffusion_pytorch_model.bin": b"p" * 99}),
                   delay=0.15).install(monkeypatch)
    reports: list[hub.PullProgress] = []

    path = hub.pull("sana-4k", on_progress=reports.append)  # the preset's default precision: bf16

    wanted = hub.select_files(fake.files, "bf16")
    assert "transformer/diffusion_pytorch_model.bf16.safetensors" in wanted
    assert "transformer/diffusion_pytorch_model.safetensors" not in wanted and "README.md" not in wanted
    assert fake.calls[0]["allow_patterns"] == wanted
    assert fake.calls[0]["tqdm_class"] is not None  # the client's own bars are off while we report
    assert path == hub.resolve_model("sana-4k", precision="bf16").path

    total = sum(len(fake.files[f]) for f in wanted)
    assert all(r.total_bytes == total and r.files_total == len(wanted) for r in reports)
    done = [r.done_bytes for r in reports]
    assert done == sorted(done) and done[-1] == total and reports[-1].files_done == len(wanted)
    assert any(0 < d < total for d in done)


def test_pull_fp32_takes_the_default_files(hub_cache, tmp_path, monkeypatch):
    source = write_fake_pipeline(tmp_path / "src", transformer_variant="bf16")
    fake = FakeHub(hub_cache, SANA_4K, repo_files(source)).install(monkeypatch)
    hub.pull("sana-1.6b-4k", precision="fp32")
    assert fake.calls[0]["allow_patterns"] == hub.select_files(fake.files, None)
    assert fake.calls[0].get("tqdm_class") is None  # no callback: the client shows its own bars
    assert hub.resolve_model("sana-1.6b-4k", precision="fp32").revision == COMMIT


def test_pull_refuses_repos_without_diffusers_weights(hub_cache, monkeypatch):
    FakeHub(hub_cache, "someone/a-dataset-like-repo", {"README.md": b"x", "data.csv": b"1,2"}).install(monkeypatch)
    with pytest.raises(SanaError, match="no diffusers-format weights"):
        hub.pull("someone/a-dataset-like-repo")


def _http_error(cls, status: int):
    import httpx2

    response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/models/x/y"))
    return cls(f"{status} Client Error", response=response)


@pytest.mark.parametrize("make_error,error_type,expected", [
    (lambda e: e.OfflineModeIsEnabled("offline"), OfflineError, "HF_HUB_OFFLINE"),
    (lambda e: ConnectionError("refused"), OfflineError, "cannot be reached"),
    (lambda e: _http_error(e.GatedRepoError, 403), SanaError, "is gated"),
    (lambda e: _http_error(e.RepositoryNotFoundError, 404), ModelNotFound, "no model repo someone/missing"),
    (lambda e: _http_error(e.HfHubHTTPError, 401), SanaError, "HTTP 401"),
    (lambda e: _http_error(e.HfHubHTTPError, 500), SanaError, "the hub refused"),
], ids=["offline-mode", "no-network", "gated", "not-found", "unauthorised", "server-error"])
def test_pull_errors_are_one_line(monkeypatch, hub_cache, make_error, error_type, expected):
    import huggingface_hub
    from huggingface_hub import errors

    def failing_model_info(*args, **kwargs):
        raise make_error(errors)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", failing_model_info)
    with pytest.raises(error_type, match=expected) as caught:
        hub.pull("someone/missing")
    assert "\n" not in str(caught.value)


def test_pull_refuses_local_paths_and_unknown_names(pipeline_dir):
    with pytest.raises(SanaError, match="is a local path"):
        hub.pull(str(pipeline_dir))
    with pytest.raises(ModelNotFound, match="unknown model"):
        hub.pull("not-a-model-name")
