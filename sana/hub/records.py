"""What the hub functions return: a resolved model, a cached repo, a listed model, a local component, a
download's progress; the constants of weight files; sizes as the hub's pages show them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SanaError
from ..registry import ModelSpec


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

def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SanaError(f"{path} is not readable JSON ({exc})", "pull or copy the model again") from None
    return data if isinstance(data, dict) else {}
