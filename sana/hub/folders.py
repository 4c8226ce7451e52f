"""Local diffusers-format model folders: missing files, components, parameter counts from safetensors headers."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from ..errors import SanaError
from ..registry import ModelSpec
from .files import _pick_weight_group, _weight_format, weight_variant
from .records import PRECISIONS, LocalComponent, _read_json


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
