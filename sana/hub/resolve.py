"""Resolving a model argument (a folder, a registry name or alias, a hub id) to a local directory, no download."""

from __future__ import annotations

import os
from pathlib import Path

from ..embedded import embedded_env, embedded_model_dir, embedded_name
from ..errors import ModelNotFound, SanaError
from ..registry import ModelSpec, find_spec, get_spec
from .cache import repo_folder, _snapshot_of
from .folders import _precision_variant, missing_files
from .records import ResolvedModel, _REPO_ID


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
            video = spec.family == "video"
            raise ModelNotFound(f"{spec.name} is not included in this installation",
                                f"build one with `{'scripts/train_nano_video.sh' if video else 'sana shapes build'}` "
                                f"and set {embedded_env(embedded_name(spec))} to its folder")
        return ResolvedModel(path=path, spec=spec, repo=None, revision=None, source="embedded")
    repo, spec = repo_for(arg, "pull")
    folder = repo_folder(repo)
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
        if (path / "train_config.json").is_file():  # a `sana finetune` run folder: its model is inside
            exported = path / "model"
            hint = (f"a full fine-tuning run's model is {exported}" if (exported / "model_index.json").is_file()
                    else f"pass its LoRA with --lora {path}, or for a full run its model folder, {exported}, "
                         "once the run has exported it")
            raise ModelNotFound(f"{arg} is a sana finetune run folder, not a model directory", hint)
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
