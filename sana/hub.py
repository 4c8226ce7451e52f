"""Models on disk: resolving a model argument to a local directory, and the standard hub cache.

A model argument is a local diffusers-format directory, a registry name or alias, or a hub `org/name` id.
Repos live in the standard Hugging Face hub cache (shared with diffusers; `HF_HOME` / `HF_HUB_CACHE`):
`resolve_model` only reads it, `pull` downloads into it, `remove` frees it. Sizes are decimal (1 GB = 10^9
bytes), as the hub's pages show them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .embedded import NANO_ENV, embedded_model_dir, embedded_name
from .errors import ModelNotFound, OfflineError, SanaError
from .registry import ModelSpec, all_specs, find_spec, get_spec

PRECISIONS = ("fp32", "fp16", "bf16")
# Weight formats a diffusers folder may hold, in the order we prefer them; safetensors whenever it exists.
_WEIGHT_FORMATS = ("safetensors", "bin")
_OTHER_WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".msgpack", ".onnx", ".onnx_data", ".h5", ".gguf")
# Config and tokenizer files every component needs, whatever the precision.
_SMALL_FILE_SUFFIXES = (".json", ".txt", ".model", ".tiktoken")
_SHARD = re.compile(r"-\d{5}-of-\d{5}")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    """A model argument resolved to a local directory (the one holding model_index.json or config.json)."""

    path: Path
    spec: ModelSpec | None
    repo: str | None
    revision: str | None  # the cached commit hash for hub repos
    source: str  # "registry" | "repo" | "directory" | "embedded"


@dataclass(frozen=True)
class CachedRepo:
    """One model repo in the hub cache."""

    repo: str
    path: Path  # models--org--name
    snapshot: Path | None  # the snapshot `main` points to, else the newest one
    revision: str | None
    size_on_disk: int
    revisions: int


@dataclass(frozen=True)
class ModelEntry:
    """One row of `sana models list`: a registry model, or a SANA pipeline found in the cache."""

    name: str
    repo: str
    spec: ModelSpec | None
    family: str | None
    status: str  # "yes" | "partial" | "no"
    size_on_disk: int


@dataclass(frozen=True)
class LocalComponent:
    """A component folder of a local model: its bytes on disk and parameters (None when not safetensors)."""

    name: str
    size_on_disk: int
    params: int | None


@dataclass(frozen=True)
class PullProgress:
    """Download progress: bytes on disk of the files being fetched (resumed bytes count as done)."""

    repo: str
    done_bytes: int
    total_bytes: int
    files_done: int
    files_total: int


# ----------------------------------------------------------------------------------------------- sizes


def human_size(num_bytes: int | None) -> str:
    """Decimal units like the hub's pages: 6.42 GB is 6.42e9 bytes."""
    if num_bytes is None:
        return "-"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes} B"


def human_count(count: int | None) -> str:
    """Parameter counts: 1.60B, 312M, 4.1k."""
    if count is None:
        return "-"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.2f}{unit}" if value < 10 else f"{value:.1f}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return str(count)


# ---------------------------------------------------------------------------------------- file choice


def _weight_format(filename: str) -> str | None:
    """"safetensors" / "bin" for weight files and their shard indexes, None for everything else."""
    name = filename.rsplit("/", 1)[-1]
    for fmt in _WEIGHT_FORMATS:
        if name.endswith(f".{fmt}") or re.search(rf"\.{fmt}(\.[\w-]+)?\.index(\.[\w-]+)?\.json$", name):
            return fmt
    return None


def weight_variant(filename: str) -> str | None:
    """The variant of a weight or index file in any of diffusers' spellings, None for the default files.

    `model.bf16.safetensors`, `model.bf16-00001-of-00002.safetensors`, `model-00001-of-00002.bf16.safetensors`
    (legacy), `model.safetensors.index.bf16.json` and `model.safetensors.bf16.index.json` (legacy) are bf16.
    """
    name = _SHARD.sub("", filename.rsplit("/", 1)[-1])
    fmt = _weight_format(name)
    if fmt is None:
        return None
    if name.endswith(".json"):
        parts = [p for p in name[: -len(".json")].split(".") if p not in ("index", fmt)]
    else:
        parts = name[: -len(fmt) - 1].split(".")
    return parts[-1] if len(parts) > 1 else None


def _pick_weight_group(weight_files: list[str], variant: str | None) -> list[str]:
    """One precision's weight files of one component: the variant's if present, else the default ones."""
    for fmt in _WEIGHT_FORMATS:
        groups: dict[str | None, list[str]] = {}
        for f in weight_files:
            if _weight_format(f) == fmt:
                groups.setdefault(weight_variant(f), []).append(f)
        if not groups:
            continue
        if variant in groups:
            return groups[variant]
        if None in groups:
            return groups[None]
        return groups[sorted(groups)[0]]  # only other variants: one of them, never all
    return []


def select_files(repo_files: Iterable[str], variant: str | None = None) -> list[str]:
    """The files of a diffusers repo needed for one precision.

    Per component folder: the `variant` weights (with their shard index) when the folder has them, else the
    default ones; safetensors whenever they exist, never .bin/.pth/.ckpt/.msgpack/.onnx beside them; plus
    every json/txt/tokenizer file. At the top level only model_index.json and other small files.
    """
    by_folder: dict[str, list[str]] = {}
    for f in repo_files:
        folder = f.rsplit("/", 1)[0] if "/" in f else ""
        by_folder.setdefault(folder, []).append(f)
    chosen: list[str] = []
    for folder, files in by_folder.items():
        weights = [f for f in files if _weight_format(f)]
        small = [f for f in files if f not in weights and f.endswith(_SMALL_FILE_SUFFIXES)]
        if folder.count("/") == 0:  # nested folders (assets/, docs/) are not components
            chosen += small
            if folder:
                chosen += _pick_weight_group(weights, variant)
    return sorted(chosen)


# ------------------------------------------------------------------------------------ the local cache


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub uses (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def _repo_folder(repo: str) -> Path | None:
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
    folder = _repo_folder(repo) if _REPO_ID.match(repo) else None
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SanaError(f"{path} is not readable JSON ({exc})", "pull or copy the model again") from None
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------ local model directories


def _model_components(model_dir: Path) -> list[str]:
    """Component folders model_index.json names (entries like `"vae": ["diffusers", "AutoencoderDC"]`)."""
    index = _read_json(model_dir / "model_index.json")
    return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and all(v)]


def _existing_weights(folder: Path) -> list[str]:
    # exists() follows the cache's symlinks: a snapshot entry whose blob is gone is missing.
    return sorted(p.name for p in folder.iterdir() if _weight_format(p.name) and p.exists()) if folder.is_dir() else []


def _missing_weights(folder: Path, variant: str | None, exact: bool) -> list[str]:
    """What a component folder lacks to load: its weights, or the shards its index names."""
    weights = _existing_weights(folder)
    group = _pick_weight_group(weights, variant)
    label = folder.name or "model"
    if not group or (exact and weight_variant(group[0]) != variant):
        return [f"{label} {variant or 'default'} weights" if exact else f"{label} weights"]
    index = next((f for f in group if f.endswith(".json")), None)
    if index is None:
        return []
    shards = set(_read_json(folder / index).get("weight_map", {}).values())
    return [f"{label}/{shard}" for shard in sorted(shards) if not (folder / shard).exists()]


def missing_files(model_dir: Path, variant: str | None = None, *, exact: bool = False) -> list[str]:
    """What a diffusers-format directory lacks: component folders and weights (empty when complete).

    `variant` prefers that precision's files; `exact` requires them (default weights when variant is None).
    """
    if not (model_dir / "model_index.json").is_file():
        return _missing_weights(model_dir, variant, exact) if (model_dir / "config.json").is_file() else []
    missing = []
    for name in _model_components(model_dir):
        folder = model_dir / name
        if not folder.is_dir() or not any(p.exists() for p in folder.iterdir()):
            missing.append(f"{name}/")
        elif (folder / "config.json").is_file():  # a model (schedulers and tokenizers carry no config.json)
            missing += _missing_weights(folder, variant, exact)
    return missing


def _precision_variant(spec: ModelSpec | None, precision: str | None) -> tuple[str | None, bool]:
    """(file variant, exact) for a precision: a preset's variant, else the precision's name except fp32."""
    if precision is None:
        return None, False
    if precision not in PRECISIONS:
        raise SanaError(f"unknown precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")
    variant = spec.weight_set(precision).variant if spec else (None if precision == "fp32" else precision)
    # Default files are what fp32 means; a variant may fall back to them (a VAE often has no bf16 files).
    return variant, variant is None


def transformer_config(model_dir: Path) -> dict[str, Any]:
    """The transformer's config.json of a local model ({} when there is none)."""
    for path in (model_dir / "transformer" / "config.json", model_dir / "config.json"):
        if path.is_file():
            return _read_json(path)
    return {}


def _safetensors_params(path: Path) -> int:
    """Parameters in a safetensors file, from its header alone (no tensor is read)."""
    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    total = 0
    for key, entry in header.items():
        if key != "__metadata__":
            count = 1
            for dim in entry["shape"]:
                count *= dim
            total += count
    return total


def local_components(model_dir: Path) -> list[LocalComponent]:
    """Each component folder's size on disk and parameter count (of one precision's safetensors)."""
    names = _model_components(model_dir) if (model_dir / "model_index.json").is_file() else [""]
    found = []
    for name in names:
        folder = model_dir / name
        if not folder.is_dir():
            continue
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        group = [f for f in _pick_weight_group(_existing_weights(folder), None) if f.endswith(".safetensors")]
        params = sum(_safetensors_params(folder / f) for f in group) if group else None
        found.append(LocalComponent(name or "transformer", size, params))
    return found


# ------------------------------------------------------------------------------------------ resolving


def _looks_like_path(arg: str) -> bool:
    return (arg in (".", "..") or arg.startswith(("/", "./", "../", "~", ".\\")) or "\\" in arg
            or arg.count("/") > 1 or bool(os.path.splitdrive(arg)[0]))


def repo_for(arg: str, action: str = "pull") -> tuple[str, ModelSpec | None]:
    """(repo id, preset) for a registry name/alias or `org/name`; local paths have no repo to `action`."""
    if Path(arg).expanduser().exists() or _looks_like_path(arg):
        raise SanaError(f"{arg} is a local path, not a hub model",
                        f"sana models {action} takes a registry name or org/name")
    spec = find_spec(arg)
    if spec is not None and embedded_name(spec):
        raise SanaError(f"{spec.name} ships inside the package: there is nothing to {action}",
                        f"use it with --model {spec.name}")
    if spec is not None:
        return spec.repo, spec
    if _REPO_ID.match(arg):
        return arg, None
    get_spec(arg)  # raises ModelNotFound with close matches
    raise AssertionError("unreachable")


def resolve_model(arg: str, *, precision: str | None = None) -> ResolvedModel:
    """A model argument to a local directory; never downloads.

    Order: an existing local path, a registry name or alias, an `org/name` hub id (found in the hub cache).
    With `precision`, that precision's weights must be on disk.
    """
    local = Path(arg).expanduser()
    if local.exists():
        return _resolve_directory(local, arg, precision)
    if _looks_like_path(arg):
        raise ModelNotFound(f"no such directory: {arg}", "pass a model directory, a registry name or org/name")
    spec = find_spec(arg)
    if embedded_name(spec):
        path = embedded_model_dir(embedded_name(spec))
        if path is None:
            raise ModelNotFound(f"{spec.name} is not included in this installation",
                                f"build one with `sana shapes build` and set {NANO_ENV} to its folder")
        return ResolvedModel(path=path, spec=spec, repo=None, revision=None, source="embedded")
    repo, spec = repo_for(arg, "pull")
    folder = _repo_folder(repo)
    snapshot = _snapshot_of(folder) if folder else None
    if snapshot is None:
        state = "is only partly downloaded" if folder else "is not downloaded"
        raise ModelNotFound(f"{arg} ({repo}) {state}", f"run: sana models pull {arg}")
    path, revision = snapshot
    variant, exact = _precision_variant(spec, precision)
    missing = missing_files(path, variant, exact=exact)
    if missing:
        pull_cmd = f"sana models pull {arg}" + (f" --precision {precision}" if precision else "")
        raise ModelNotFound(f"{arg} is missing local files: {', '.join(missing)}", f"run: {pull_cmd}")
    source = "registry" if spec is not None and "/" not in arg else "repo"
    return ResolvedModel(path=path, spec=spec, repo=repo, revision=revision, source=source)


def require_model_directory(path: Path, arg: str) -> Path:
    """`path` if it holds model_index.json or a config.json, else a one-line error."""
    if not path.is_dir() or not ((path / "model_index.json").is_file() or (path / "config.json").is_file()):
        raise ModelNotFound(f"{arg} is not a model directory: no model_index.json or config.json",
                            "pass a diffusers-format folder, a registry name or org/name")
    return path


def _resolve_directory(path: Path, arg: str, precision: str | None) -> ResolvedModel:
    require_model_directory(path, arg)
    variant, exact = _precision_variant(None, precision)
    missing = missing_files(path, variant, exact=exact)
    if missing:
        raise ModelNotFound(f"{arg} is missing local files: {', '.join(missing)}",
                            "copy them in, or save the pipeline again")
    return ResolvedModel(path=path.resolve(), spec=None, repo=None, revision=None, source="directory")


# --------------------------------------------------------------------------------------- pull and rm


def _hub_error(exc: Exception, arg: str, repo: str) -> SanaError | None:
    """A one-line error for what the hub client raised; None for errors that are not about the hub."""
    from huggingface_hub import constants
    from huggingface_hub import errors as hub_errors

    offline_mode = getattr(hub_errors, "OfflineModeIsEnabled", ())
    no_local_entry = isinstance(exc, hub_errors.LocalEntryNotFoundError)
    if isinstance(exc, offline_mode) or (no_local_entry and getattr(constants, "HF_HUB_OFFLINE", False)):
        return OfflineError(f"cannot pull {arg}: offline mode is on (HF_HUB_OFFLINE=1)",
                            "unset HF_HUB_OFFLINE to download")
    if _is_connection_error(exc) or no_local_entry:
        return OfflineError(f"cannot pull {arg}: {constants.ENDPOINT} cannot be reached",
                            "check the network connection and HF_ENDPOINT, then run the same command to resume")
    if isinstance(exc, hub_errors.GatedRepoError):
        return SanaError(f"{repo} is gated", f"accept its terms at {constants.ENDPOINT}/{repo} and set HF_TOKEN")
    if isinstance(exc, hub_errors.RepositoryNotFoundError):
        return ModelNotFound(f"no model repo {repo} on the hub", "check the name; for a private repo set HF_TOKEN")
    if isinstance(exc, hub_errors.RevisionNotFoundError):
        return ModelNotFound(f"{repo} has no main branch", "check the repo on the hub")
    if isinstance(exc, hub_errors.HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return SanaError(f"not allowed to read {repo} (HTTP {status})", "set HF_TOKEN to a token that can read it")
        return SanaError(f"the hub refused {repo}: {str(exc).splitlines()[0]}", "try again later")
    if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
        return SanaError(f"disk full while pulling {arg} into {hub_cache_dir()}",
                         "free space or set HF_HOME to a larger disk, then run the same command to resume")
    return None


def _is_connection_error(exc: BaseException) -> bool:
    # requests (older huggingface_hub) and httpx (newer) name their network errors alike.
    names = {cls.__name__ for cls in type(exc).__mro__}
    network = {"ConnectError", "ConnectionError", "ConnectTimeout", "NetworkError", "TimeoutException", "ReadTimeout"}
    return isinstance(exc, (ConnectionError, TimeoutError)) or bool(names & network)


def pull(arg: str, *, precision: str | None = None,
         on_progress: Callable[[PullProgress], None] | None = None) -> Path:
    """Download the files a model needs for one precision into the hub cache; returns the snapshot directory.

    Interrupted downloads resume (huggingface_hub keeps `.incomplete` blobs). HF_HOME, HF_HUB_CACHE, HF_TOKEN,
    HF_ENDPOINT and HF_HUB_OFFLINE apply as huggingface_hub reads them. With `on_progress`, the hub client's
    own progress bars are off and `on_progress` is called a few times a second instead.
    """
    from huggingface_hub import HfApi, snapshot_download

    repo, spec = repo_for(arg, "pull")
    variant, _ = _precision_variant(spec, precision if precision else (spec.defaults.get("dtype") if spec else None))
    try:
        info = HfApi().model_info(repo, files_metadata=True)
    except Exception as exc:
        raise (_hub_error(exc, arg, repo) or exc) from None
    siblings = {s.rfilename: s for s in info.siblings or []}
    files = select_files(siblings, variant)
    if not any(_weight_format(f) for f in files):
        raise SanaError(f"{repo} has no diffusers-format weights",
                        "sana needs a repo with model_index.json and component folders")
    sizes = {f: siblings[f].size or 0 for f in files}
    kwargs = dict(repo_id=repo, allow_patterns=[_escape_glob(f) for f in files], cache_dir=hub_cache_dir())
    try:
        if on_progress is None:
            path = snapshot_download(**kwargs)
        else:
            path = _download_with_progress(snapshot_download, kwargs, repo, sizes, siblings, on_progress)
    except Exception as exc:
        raise (_hub_error(exc, arg, repo) or exc) from None
    return Path(path)


def pull_files(repo: str, choose: Callable[[list[str]], list[str]], *, label: str,
               on_progress: Callable[[PullProgress], None] | None = None) -> Path:
    """Download the files `choose(repo file names)` picks from any hub repo (the RL reward models, in transformers'
    layout) into the hub cache; errors, resumption and progress as `pull`. Returns the snapshot directory."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(repo, files_metadata=True)
    except Exception as exc:
        raise (_hub_error(exc, label, repo) or exc) from None
    siblings = {s.rfilename: s for s in info.siblings or []}
    files = choose(list(siblings))
    sizes = {f: siblings[f].size or 0 for f in files}
    kwargs = dict(repo_id=repo, allow_patterns=[_escape_glob(f) for f in files], cache_dir=hub_cache_dir())
    try:
        if on_progress is None:
            return Path(snapshot_download(**kwargs))
        return Path(_download_with_progress(snapshot_download, kwargs, repo, sizes, siblings, on_progress))
    except Exception as exc:
        raise (_hub_error(exc, label, repo) or exc) from None


def _escape_glob(filename: str) -> str:
    """allow_patterns are fnmatch globs; a literal name must not match others."""
    return re.sub(r"([\[\]*?])", r"[\1]", filename)


def _silent_tqdm():
    from huggingface_hub.utils import tqdm

    class SilentTqdm(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return SilentTqdm


def _download_with_progress(download, kwargs: dict, repo: str, sizes: Mapping[str, int], siblings: Mapping[str, Any],
                            on_progress: Callable[[PullProgress], None]) -> str:
    """Run the download in a thread and report the bytes on disk, finished and `.incomplete` alike.

    Watching the disk rather than hooking the client's tqdm bars works with every huggingface_hub version,
    and counts the bytes a resumed download already had.
    """
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["path"] = download(**kwargs, tqdm_class=_silent_tqdm())
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    # A daemon thread, so that Ctrl-C reaches the caller at once instead of after a multi-GB file.
    thread = threading.Thread(target=work, name=f"pull {repo}", daemon=True)
    thread.start()
    folder = hub_cache_dir() / ("models--" + repo.replace("/", "--"))
    etags = {f: _etag(siblings[f]) for f in sizes}
    while thread.is_alive():
        thread.join(0.25)
        on_progress(_progress_on_disk(repo, folder, sizes, etags))
    if "error" in result:
        raise result["error"]
    on_progress(PullProgress(repo, sum(sizes.values()), sum(sizes.values()), len(sizes), len(sizes)))
    return result["path"]


def _etag(sibling: Any) -> str | None:
    """The blob name the cache stores a file under: the LFS sha256, else the git blob id."""
    lfs = getattr(sibling, "lfs", None)
    sha = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
    return sha or getattr(sibling, "blob_id", None)


def _progress_on_disk(repo: str, folder: Path, sizes: Mapping[str, int],
                      etags: Mapping[str, str | None]) -> PullProgress:
    done = files_done = 0
    for name, size in sizes.items():
        etag = etags.get(name)
        blob = folder / "blobs" / etag if etag else None
        if blob is not None and blob.is_file():
            done, files_done = done + size, files_done + 1
        elif blob is not None:
            partial = blob.with_name(etag + ".incomplete")
            done += min(partial.stat().st_size, size) if partial.is_file() else 0
    return PullProgress(repo, done, sum(sizes.values()), files_done, len(sizes))


def remove(arg: str) -> tuple[str, int]:
    """Delete every cached revision of a model's repo; returns (repo id, bytes freed)."""
    from huggingface_hub import scan_cache_dir

    repo, _ = repo_for(arg, "rm")
    folder = _repo_folder(repo)
    if folder is None:
        raise ModelNotFound(f"{arg} ({repo}) is not in the hub cache", "nothing to remove; see sana models list")
    info = scan_cache_dir(hub_cache_dir())
    cached = next((r for r in info.repos if r.repo_path in (folder, folder.resolve())), None)
    freed = 0
    if cached is not None:
        strategy = info.delete_revisions(*(r.commit_hash for r in cached.revisions))
        # A hash may select another repo's folder (only hand-made caches share hashes): then delete ours directly.
        if strategy.repos == {cached.repo_path} and not (strategy.snapshots or strategy.refs or strategy.blobs):
            freed = strategy.expected_freed_size
            strategy.execute()
        else:
            freed = cached.size_on_disk
    if folder.exists():  # not scanned as a repo (a pull stopped before its first file), or deleted above by hand
        if cached is None:
            freed = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        shutil.rmtree(folder)
    return (cached.repo_id if cached else repo), freed
