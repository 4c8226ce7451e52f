"""Which files of a repo a precision needs (weight variants, shards, small config files)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from .records import _SHARD, _SMALL_FILE_SUFFIXES, _WEIGHT_FORMATS


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
