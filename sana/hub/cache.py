"""The standard Hugging Face hub cache: cached snapshots and the registry's models in it."""

from __future__ import annotations

from pathlib import Path

from ..embedded import embedded_model_dir, embedded_name
from ..errors import SanaError
from ..registry import all_specs
from .folders import missing_files
from .records import _REPO_ID, CachedRepo, ModelEntry, _read_json


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub uses (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def repo_folder(repo: str) -> Path | None:
    """A repo's folder in the hub cache, complete or not (what `remove` deletes); None when there is none."""
    cache = hub_cache_dir()
    folder = cache / ("models--" + repo.replace("/", "--"))
    if folder.is_dir():
        return folder
    if not cache.is_dir():
        return None
    # Hub ids are case-insensitive; the cache folder keeps whatever spelling downloaded it.
    wanted = folder.name.lower()
    return next((p for p in cache.iterdir() if p.name.lower() == wanted and p.is_dir()), None)


def _snapshot_of(folder: Path) -> tuple[Path, str] | None:
    """The snapshot `refs/main` points to, else the newest snapshot (a pull by commit writes no ref)."""
    ref = folder / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
        if (folder / "snapshots" / commit).is_dir():
            return folder / "snapshots" / commit, commit
    snapshots = folder / "snapshots"
    candidates = [p for p in snapshots.iterdir() if p.is_dir()] if snapshots.is_dir() else []
    if not candidates:
        return None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    return newest, newest.name


def cached_snapshot(repo: str) -> tuple[Path, str] | None:
    """(snapshot directory, commit) of a cached `org/name` repo, complete or not; None when not cached."""
    folder = repo_folder(repo) if _REPO_ID.match(repo) else None
    return _snapshot_of(folder) if folder else None


def cached_repos() -> dict[str, CachedRepo]:
    """Every model repo in the hub cache, keyed by lower-case repo id."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(hub_cache_dir())
    except CacheNotFound:
        return {}
    except ValueError as exc:  # the cache path is a file
        raise SanaError(f"cannot read the hub cache: {exc}", "point HF_HOME or HF_HUB_CACHE at a directory") from None
    found = {}
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        snapshot = _snapshot_of(repo.repo_path)
        found[repo.repo_id.lower()] = CachedRepo(
            repo=repo.repo_id, path=repo.repo_path, snapshot=snapshot[0] if snapshot else None,
            revision=snapshot[1] if snapshot else None, size_on_disk=repo.size_on_disk, revisions=len(repo.revisions),
        )
    return found


def list_models() -> list[ModelEntry]:
    """The registry with each model's cache status, then SANA pipelines cached under other repo ids."""
    cached = cached_repos()
    entries = []
    for spec in all_specs():
        if embedded_name(spec):
            path = embedded_model_dir(embedded_name(spec))
            size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path else 0
            entries.append(ModelEntry(spec.name, spec.repo, spec, spec.family, "yes" if path else "no", size))
            continue
        hit = cached.pop(spec.repo.lower(), None)
        size = hit.size_on_disk if hit else 0
        entries.append(ModelEntry(spec.name, spec.repo, spec, spec.family, _status(hit), size))
    for hit in sorted(cached.values(), key=lambda c: c.repo.lower()):
        family = _family_of(hit.snapshot) if hit.snapshot else None
        if family:
            entries.append(ModelEntry(hit.repo, hit.repo, None, family, _status(hit), hit.size_on_disk))
    return entries


def _status(hit: CachedRepo | None) -> str:
    if hit is None:
        return "no"
    if hit.snapshot is None or missing_files(hit.snapshot):
        return "partial"
    return "yes"


def _family_of(model_dir: Path) -> str | None:
    """The SANA family a model_index.json names, None for other pipelines."""
    name = _read_json(model_dir / "model_index.json").get("_class_name", "")
    if not name.startswith("Sana"):
        return None
    for marker, family in (("Sprint", "sprint"), ("Video", "video"), ("WM", "wm")):
        if marker in name:
            return family
    return "sana"

