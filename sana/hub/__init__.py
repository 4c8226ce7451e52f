"""Models on disk: resolving a model argument to a local directory, and the standard hub cache.

A model argument is a local diffusers-format directory, a registry name or alias, or a hub `org/name` id.
Repos live in the standard Hugging Face hub cache (shared with diffusers; `HF_HOME` / `HF_HUB_CACHE`):
`resolve_model` only reads it, `pull` downloads into it, `remove` frees it. Sizes are decimal (1 GB = 10^9
bytes), as the hub's pages show them.

Modules: `records` (what the functions return, sizes), `files` (which files a precision needs), `cache` (the hub
cache), `folders` (local model folders), `resolve` (an argument to a folder), `download` (pull and remove).
"""

from __future__ import annotations

from .records import (PRECISIONS, CachedRepo, LocalComponent, ModelEntry, PullProgress, ResolvedModel, human_count,
                      human_size)
from .files import select_files, weight_variant
from .cache import cached_repos, cached_snapshot, hub_cache_dir, list_models
from .folders import local_components, missing_files, transformer_config
from .resolve import repo_for, require_model_directory, resolve_model
from .download import pull, pull_files, remove

__all__ = [
    "CachedRepo",
    "LocalComponent",
    "ModelEntry",
    "PRECISIONS",
    "PullProgress",
    "ResolvedModel",
    "human_count",
    "human_size",
    "select_files",
    "weight_variant",
    "cached_repos",
    "cached_snapshot",
    "hub_cache_dir",
    "list_models",
    "local_components",
    "missing_files",
    "transformer_config",
    "repo_for",
    "require_model_directory",
    "resolve_model",
    "pull",
    "pull_files",
    "remove",
]
