"""Downloading into the hub cache (`pull`, `pull_files`, with progress and resumption) and freeing it (`remove`)."""

from __future__ import annotations

import re
import shutil
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ModelNotFound, OfflineError, SanaError
from .cache import repo_folder, hub_cache_dir
from .files import _weight_format, select_files
from .folders import _precision_variant
from .records import PullProgress
from .resolve import repo_for


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
    folder = repo_folder(repo)
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
