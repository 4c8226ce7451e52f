"""Where models live: a registry name, an `org/repo` hub id, or a local diffusers-format directory.

Downloads go to the standard Hugging Face hub cache (shared with diffusers; HF_HOME, HF_HUB_CACHE, HF_TOKEN and
HF_ENDPOINT are honoured by huggingface_hub). Resolving never downloads: `pull` does, explicitly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelNotFound, OfflineError, SanaError
from .registry import ModelSpec, find_spec, find_spec_by_repo, get_spec

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt", ".msgpack", ".onnx", ".h5")
KNOWN_VARIANTS = ("fp16", "bf16", "fp32")
# Components a diffusers pipeline folder needs weights for.
WEIGHT_COMPONENTS = ("transformer", "text_encoder", "vae")


@dataclass(frozen=True)
class ResolvedModel:
    """A model found on this machine."""

    path: Path  # the folder holding model_index.json (or a transformer config.json)
    spec: ModelSpec | None  # the registry preset, when the model is one the registry knows
    repo: str | None  # hub repo id, for hub models
    revision: str | None  # cached commit hash, for hub models
    source: str  # "registry" | "repo" | "directory"


# -- the cache ---------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def cached_repos() -> dict[str, object]:
    """Cached model repos by lower-cased repo id (huggingface_hub's CachedRepoInfo)."""
    from huggingface_hub import scan_cache_dir

    if not cache_dir().is_dir():
        return {}
    try:
        info = scan_cache_dir(cache_dir())
    except Exception as exc:  # a damaged cache folder should not break `models list`
        raise SanaError(f"cannot read the hub cache at {cache_dir()}: {exc}") from None
    return {repo.repo_id.lower(): repo for repo in info.repos if repo.repo_type == "model"}


def _snapshot(repo_info) -> tuple[Path, str]:
    """The snapshot `main` points at, else the most recently modified one."""
    revisions = sorted(repo_info.revisions, key=lambda r: ("main" in r.refs, r.last_modified), reverse=True)
    return Path(revisions[0].snapshot_path), revisions[0].commit_hash


def _check_complete(path: Path, name: str) -> None:
    """A pulled pipeline must have each component's config and weights."""
    if not (path / "model_index.json").is_file():
        raise SanaError(f"{name} is in the cache but has no model_index.json", f"run: sana models pull {name}")
    missing = []
    for component in WEIGHT_COMPONENTS:
        folder = path / component
        if not (folder / "config.json").is_file():
            missing.append(f"{component}/config.json")
        elif not any(f.name.endswith(WEIGHT_SUFFIXES) for f in folder.iterdir()):
            missing.append(f"{component} weights")
    if not (path / "tokenizer").is_dir():
        missing.append("tokenizer/")
    if missing:
        raise SanaError(f"{name} is missing local files: {', '.join(missing)}", f"run: sana models pull {name}")


def _looks_like_path(arg: str) -> bool:
    return arg.startswith((".", "/", "~")) or arg.count("/") > 1 or "\\" in arg


def repo_for(arg: str) -> tuple[str, ModelSpec | None]:
    """The hub repo id (and preset) a registry name, alias or repo id stands for."""
    spec = find_spec(arg)
    if spec is not None:
        return spec.repo, spec
    if REPO_ID.match(arg) and not _looks_like_path(arg):
        return arg, find_spec_by_repo(arg)
    get_spec(arg)  # raises the unknown-model error with suggestions
    raise ModelNotFound(f"unknown model '{arg}'")


def resolve_model(arg: str, *, precision: str | None = None) -> ResolvedModel:
    """A local directory for `arg`, without downloading anything."""
    local = Path(arg).expanduser()
    if local.exists():
        if not local.is_dir():
            raise SanaError(f"{arg} is a file, not a model directory", "pass the folder holding model_index.json")
        if not ((local / "model_index.json").is_file() or (local / "config.json").is_file()):
            raise SanaError(f"{arg} is not a model directory: no model_index.json or config.json",
                            "pass a diffusers-format folder or a registry name")
        return ResolvedModel(local.resolve(), None, None, None, "directory")
    if _looks_like_path(arg):
        raise ModelNotFound(f"no such model directory: {arg}")
    repo, spec = repo_for(arg)
    cached = cached_repos().get(repo.lower())
    name = spec.name if spec else repo
    if cached is None or not cached.revisions:
        raise ModelNotFound(f"{name} is not downloaded", f"run: sana models pull {name}")
    path, revision = _snapshot(cached)
    _check_complete(path, name)
    return ResolvedModel(path, spec, repo, revision, "registry" if spec else "repo")


# -- pulling ------------------------------------------------------------------------------------------------

def _variant_of(filename: str) -> str | None:
    parts = Path(filename).name.split(".")
    for part in parts[1:-1]:
        head = part.split("-")[0]
        if head in KNOWN_VARIANTS:
            return head
    return None


def select_files(files: list[str], variant: str | None) -> list[str]:
    """The files one precision needs: per folder, the `variant` weights when they exist, else the default ones;
    safetensors over pickled formats; every config, index and tokenizer file."""
    by_folder: dict[str, list[str]] = {}
    for f in files:
        by_folder.setdefault(f.rsplit("/", 1)[0] if "/" in f else "", []).append(f)
    chosen: list[str] = []
    for folder_files in by_folder.values():
        weights = [f for f in folder_files if f.endswith(WEIGHT_SUFFIXES) or ".index." in f.rsplit("/", 1)[-1]]
        others = [f for f in folder_files if f not in weights]
        chosen += [f for f in others if not f.rsplit("/", 1)[-1].startswith(".")]
        if not weights:
            continue
        wanted = [f for f in weights if variant and _variant_of(f) == variant]
        if not [f for f in wanted if f.endswith(".safetensors")]:
            wanted = [f for f in weights if _variant_of(f) is None]
        safetensors = [f for f in wanted if f.endswith(".safetensors") or (".safetensors.index" in f)]
        chosen += safetensors if any(f.endswith(".safetensors") for f in safetensors) else \
            [f for f in wanted if f.endswith((".bin", ".json"))]
    return sorted(chosen)


def _network_error(exc: BaseException) -> bool:
    text = f"{type(exc).__module__}.{type(exc).__name__}".lower()
    return any(word in text for word in ("connect", "timeout", "offline", "network", "httpx", "socket")) or \
        isinstance(exc, (ConnectionError, TimeoutError))


def pull(arg: str, *, precision: str | None = None) -> Path:
    """Download what `precision` needs of a model into the hub cache (resumable); returns the snapshot folder."""
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    if Path(arg).expanduser().exists():
        raise SanaError(f"{arg} is a local directory", "only hub models are pulled")
    repo, spec = repo_for(arg)
    name = spec.name if spec else repo
    if constants.HF_HUB_OFFLINE:
        raise OfflineError(f"cannot download {name}: HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE to download")
    variant = spec.weight_set(precision).variant if spec else (precision if precision in KNOWN_VARIANTS else None)
    _check_reachable(constants.ENDPOINT, name)
    try:
        files = HfApi().list_repo_files(repo)
        allow = select_files(files, variant)
        return Path(snapshot_download(repo, allow_patterns=allow))
    except GatedRepoError:
        raise SanaError(f"{repo} is gated", "accept its licence on the hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise SanaError(f"{repo} was not found on the hub (or is private)", "check the name; set HF_TOKEN for private repos") from None
    except HfHubHTTPError as exc:
        raise SanaError(f"the hub refused {repo}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        if _network_error(exc):
            raise OfflineError(f"cannot reach the hub to download {name} ({type(exc).__name__})",
                               "check the network, HF_ENDPOINT or a proxy; partial downloads resume") from None
        raise


def _check_reachable(endpoint: str, name: str, timeout: float = 5.0) -> None:
    """Fail at once when the hub cannot be reached, instead of after huggingface_hub's retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as exc:
        raise OfflineError(f"cannot reach the hub at {endpoint} to download {name} ({exc.strerror or exc})",
                           "check the network, HF_ENDPOINT or a proxy; partial downloads resume") from None


def remove(arg: str) -> int:
    """Delete every cached revision of a model; returns the bytes freed."""
    from huggingface_hub import scan_cache_dir

    repo, spec = repo_for(arg)
    cached = cached_repos().get(repo.lower())
    if cached is None:
        raise ModelNotFound(f"{spec.name if spec else repo} is not in the cache", "nothing to remove")
    strategy = scan_cache_dir(cache_dir()).delete_revisions(*[r.commit_hash for r in cached.revisions])
    freed = strategy.expected_freed_size
    strategy.execute()
    return freed
