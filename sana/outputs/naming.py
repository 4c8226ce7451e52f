"""Output paths: default names from the prompt and seed, numbered explicit paths, no silent overwrites.

Images and clips are named the same way; only the suffixes they accept differ. A clip written as PNG frames is
a folder, named like a file without a suffix.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path
from typing import Any

from ..errors import SanaError, UsageError
from .atomic import exists_error
from .images import image_format
from .video import CLIP_SUFFIXES, clip_format


def prompt_slug(prompt: str, max_length: int = 40, fallback: str = "image") -> str:
    """ASCII words of the prompt joined by '-', cut at a word boundary; `fallback` when none are left."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii")
    words = re.findall(r"[a-z0-9]+", ascii_text.lower())
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > max_length:
            break
        slug = candidate
    if not slug and words:
        slug = words[0][:max_length]
    return slug or fallback


PROMPT_HASH_LENGTH = 8  # hex digits of the prompt's sha256 in a name whose slug does not spell the whole prompt


def prompt_stem(prompt: str, max_length: int = 40, fallback: str = "image") -> str:
    """The prompt's part of a default output name: its slug, and when the slug does not spell every word of the
    prompt (cut at `max_length`, or words outside ASCII dropped: `fallback` alone for a prompt with none left) a
    short hash of the whole prompt after it, so that two prompts alike in their first words never share a name.
    Prompts the slug spells keep the bare slug; prompts that differ only in case or punctuation still share it
    (`made_already` tells their outputs apart)."""
    slug = prompt_slug(prompt, max_length, fallback)
    letters = "".join(c for c in unicodedata.normalize("NFKD", prompt) if not unicodedata.combining(c)).lower()
    words = re.findall(r"[^\W_]+", letters)  # every script's letters and digits, accents aside
    if slug.split("-") == words:
        return slug
    return f"{slug}-{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:PROMPT_HASH_LENGTH]}"


def plan_output_paths(out: str | None, *, prompt: str, seeds: list[int], ext: str = ".png", force: bool,
                      index_start: int = 0, taken: set[Path] | frozenset[Path] = frozenset()) -> list[Path]:
    """One image path per seed.

    out may be:
    - None or "": the current directory, with default names;
    - an existing directory, or a path ending in "/" (created when the image is saved): default names there,
      "<prompt slug>-<seed><ext>" (a slug that had to drop words of the prompt is followed by a short hash of
      the prompt: `prompt_stem`), with "-2", "-3", ... appended when the name is already planned in this run
      (in this call or in `taken`, the paths earlier prompts of the run got). Names never depend on what is on
      disk, so a rerun plans the same names: a name that exists is an error unless force;
    - a file path (.png/.jpg/.jpeg/.webp; its suffix wins over ext): used as is for a single image. For several
      images, or when index_start > 0 (earlier prompts of the same run already used this -o), images are
      numbered by position: "name-<index_start + 1>.png", "name-<index_start + 2>.png", ... An existing file
      path is an error unless force.
    """
    if not seeds:
        return []
    if _is_file_target(out):
        target = Path(out).expanduser()
        if not target.suffix:
            raise UsageError(f"-o {target} has no image suffix",
                             "use .png, .jpg or .webp, or end it with / for a directory")
        image_format(target)
        return _numbered_paths(target, len(seeds), force, index_start)
    ext = ext.lower() if ext.startswith(".") else f".{ext.lower()}"
    image_format(Path(f"x{ext}"))
    return _default_paths(out, prompt_stem(prompt), seeds, ext, force, taken)


def plan_clip_paths(out: str | None, *, prompt: str, seeds: list[int], fmt: str | None = None, force: bool,
                    index_start: int = 0, taken: set[Path] | frozenset[Path] = frozenset()) -> list[Path]:
    """One clip path per seed, named exactly as `plan_output_paths` names images.

    fmt is "mp4", "gif", "webp" or "png" (PNG frames: one folder per clip); None takes it from a file -o's
    suffix, else "mp4". In a directory a clip is "<prompt stem>-<seed>.mp4" (a frames folder has no suffix). A
    file -o (.mp4/.gif/.webp) is used as is for one clip and numbered for several; it cannot name PNG frames,
    which need a directory -o, and it must agree with an explicit fmt.
    """
    if not seeds:
        return []
    if _is_file_target(out):
        target = Path(out).expanduser()
        if not target.suffix:
            raise UsageError(f"-o {target} has no clip suffix",
                             "use .mp4, .gif or .webp, or end it with / for a directory")
        if target.suffix.lower() == ".png" or fmt == "png":
            raise UsageError(f"-o {target}: PNG frames are written as one folder per clip",
                             "give -o a directory (end it with /)")
        target_fmt = clip_format(target)
        if fmt is not None and clip_format(fmt) != target_fmt:
            raise UsageError(f"-o {target} is a .{target_fmt} file but the format asked for is {fmt}",
                             f"use a .{clip_format(fmt)} name, or leave the format out")
        return _numbered_paths(target, len(seeds), force, index_start)
    ext = CLIP_SUFFIXES[clip_format(fmt or "mp4")]
    return _default_paths(out, prompt_stem(prompt, fallback="clip"), seeds, ext, force, taken)


def _is_file_target(out: str | None) -> bool:
    return bool(out) and not (out.endswith(("/", os.sep)) or Path(out).expanduser().is_dir())


def _default_paths(out: str | None, slug: str, seeds: list[int], ext: str, force: bool,
                   taken: set[Path] | frozenset[Path]) -> list[Path]:
    """Readable names made unique against this run's plan only (never the disk, so reruns plan the same names);
    then a name on disk is an error unless force."""
    directory = Path(out).expanduser() if out else Path(".")
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"-o {out} is a file, not a directory")
    planned = set(taken)
    paths = []
    for seed in seeds:
        stem = f"{slug}-{seed}"
        candidate = directory / f"{stem}{ext}"
        counter = 1
        while candidate in planned:
            counter += 1
            candidate = directory / f"{stem}-{counter}{ext}"
        planned.add(candidate)
        paths.append(candidate)
    if not force:
        for path in paths:
            if _taken(path):
                raise exists_error(path)
    return paths


def _numbered_paths(target: Path, count: int, force: bool, index_start: int) -> list[Path]:
    if count == 1 and index_start == 0:
        paths = [target]
    else:
        paths = [target.with_name(f"{target.stem}-{index_start + i + 1}{target.suffix}") for i in range(count)]
    if not force:
        for path in paths:
            if path.exists():
                raise exists_error(path)
    return paths


def _taken(path: Path) -> bool:
    return path.exists() or path.is_symlink()  # a dangling link is taken too: writing through it would surprise


def made_already(path: Path, *, prompt: str, seed: int, model: str | None = None,
                 asked: dict[str, Any] | None = None) -> bool:
    """Whether an output planned at `path` is there already (`--skip-existing`): False when nothing is; True when
    the record embedded in what is there holds this prompt and seed (a --best-of output: seed among its
    candidates), this model when both name one, and every setting the run asked for (`asked`: GenerationRecord
    field -> value, "size" -> (width, height), "loras" -> [(file, scale)]; what the record does not say is not
    held against it). Anything else in the way is an error naming it, never a skip: skipping it would leave the
    planned output unmade."""
    from .reading import read_metadata

    path = Path(path)
    if not path.exists():
        return False
    try:
        record = read_metadata(path)
    except (SanaError, OSError, ValueError):
        raise _in_the_way(path, "holds no record of what it was made from") from None
    if record.prompt != prompt:
        held = " ".join(str(record.prompt).split())  # one line, whatever the prompt holds
        held = held if len(held) <= 60 else held[:57] + "..."
        raise _in_the_way(path, f"holds another prompt, {held!r}")
    best_of = (record.extra or {}).get("best_of") or {}
    if seed not in {record.seed, *(int(s) for s, *_ in best_of.get("scores", []))}:
        raise _in_the_way(path, f"holds seed {record.seed}, not {seed}")
    if model and record.model and not _same_model(record.model, model):
        raise _in_the_way(path, f"was made with {record.model}, not {model}")
    difference = _setting_difference(record, asked or {})
    if difference:
        raise SanaError(f"{path} is in the way: it was made with {difference}",
                        "move it away, choose another -o, or make it again with --force instead of --skip-existing")
    return True


_SETTING_NAMES = {"steps": "{} steps", "guidance": "guidance {}", "sampler": "the {} sampler", "flow_shift": "shift {}",
                  "pag": "PAG {}"}


def _lora_names(loras: list[tuple[str, float]]) -> str:
    return ", ".join(f"LoRA {Path(p).name}:{scale:g}" for p, scale in loras) or "no LoRA"


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _setting_difference(record, asked: dict[str, Any]) -> str | None:
    """'4 steps, not 9' for the first asked setting the record holds otherwise; None when all agree."""
    import math

    for field, value in asked.items():
        if field == "loras":
            held = sorted((str(Path(e.get("path", "")).resolve()), float(e.get("scale", 1.0))) for e in record.loras)
            wanted = sorted((str(Path(p).resolve()), float(scale)) for p, scale in value)
            if held != wanted:
                return f"{_lora_names(held)}, not {_lora_names(wanted)}"
        elif field == "size":
            if record.width and record.height and (record.width, record.height) != tuple(value):
                return f"{record.width}x{record.height}, not {value[0]}x{value[1]}"
        elif field == "negative_prompt":
            if record.sampler != "scm" and (record.negative_prompt or "") != (value or ""):  # Sprint keeps none
                return "another negative prompt"
        else:
            held = getattr(record, field, None)
            if held is None:
                continue
            same = (math.isclose(float(held), float(value), rel_tol=1e-6, abs_tol=1e-9)
                    if isinstance(held, (int, float)) else str(held) == str(value))
            if not same:
                form = _SETTING_NAMES.get(field, field + " {}")
                return f"{form.format(_shown(held))}, not {_shown(value)}"
    return None


def _in_the_way(path: Path, what: str) -> SanaError:
    return SanaError(f"{path} is in the way: it {what}", "move it away or choose another -o")


def _same_model(recorded: str, asked: str) -> bool:
    """Two model arguments naming the same model: equal, one preset by two of its names, or one folder."""
    from ..registry import find_spec

    if recorded == asked:
        return True
    specs = find_spec(recorded), find_spec(asked)
    if specs[0] is not None and specs[1] is not None:
        return specs[0].name == specs[1].name
    try:
        return Path(recorded).expanduser().resolve() == Path(asked).expanduser().resolve()
    except (OSError, RuntimeError):
        return False
