"""Reading `--prompts FILE`: one prompt a line, or JSONL with per-line overrides of the generation flags."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SanaError, UsageError

# Override keys a JSONL line may set, by the type their value must have. Names follow the flags of `sana gen` and
# `sana video`; width/height are folded into "res" so the caller sees one size setting. Each command refuses the
# keys it does not take (a clip's "frames" in `sana gen`, "pag" in `sana video`).
INT_KEYS = ("seed", "steps", "num", "pag_layer", "width", "height", "frames")
FLOAT_KEYS = ("cfg", "pag", "shift", "fps")
STRING_KEYS = ("negative", "sampler", "out", "image")
CLIP_KEYS = ("frames", "fps", "motion_score", "image")
OVERRIDE_KEYS = (*INT_KEYS, *FLOAT_KEYS, *STRING_KEYS, "res", "lora", "motion_score")


@dataclass
class PromptJob:
    """One prompt of a prompts file; overrides use the flag names (negative, seed, cfg, res, lora, ...)."""

    prompt: str
    overrides: dict[str, Any] = field(default_factory=dict)
    line: int = 0  # 1-based line in the file, for messages


def read_prompts(path: Path, check_size: Callable[[str], Any] | None = None,
                 check_line: Callable[[dict[str, Any]], Any] | None = None) -> list[PromptJob]:
    """Jobs from a prompts file: JSONL when it ends in .jsonl or every prompt line starts with '{'.

    Blank lines and lines starting with '#' are skipped in both forms. Relative paths in "out", "lora" and "image"
    are taken from the current directory, as on the command line. `check_size(res)`, the command's own reading of
    a size, checks each line's "res" (or "width"/"height"), and `check_line(overrides)` the command's checks of
    every other value (ranges, samplers, files): their errors come back naming the file and line, as every other
    error about a line does.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"prompts file {path} not found") from None
    except IsADirectoryError:
        raise SanaError(f"prompts file {path} is a directory") from None
    except UnicodeDecodeError:
        raise SanaError(f"prompts file {path} is not UTF-8 text") from None
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    if not lines:
        raise SanaError(f"prompts file {path} has no prompts")
    is_jsonl = path.suffix.lower() == ".jsonl" or all(line.startswith("{") for _, line in lines)
    if not is_jsonl:
        return [PromptJob(prompt=line, line=number) for number, line in lines]
    return [_json_line(path, number, line, check_size, check_line) for number, line in lines]


def _json_line(path: Path, number: int, line: str, check_size: Callable[[str], Any] | None = None,
               check_line: Callable[[dict[str, Any]], Any] | None = None) -> PromptJob:
    where = f"{path} line {number}"
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SanaError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise SanaError(f"{where}: expected a JSON object with a \"prompt\"")
    prompt = data.pop("prompt", None)
    if not isinstance(prompt, str) or not prompt.strip():
        raise SanaError(f"{where}: \"prompt\" is missing or empty")
    unknown = sorted(set(data) - set(OVERRIDE_KEYS))
    if unknown:
        raise SanaError(f"{where}: unknown key {', '.join(map(repr, unknown))}",
                        f"allowed: prompt, {', '.join(OVERRIDE_KEYS)}")
    overrides = {key: _checked(where, key, value) for key, value in data.items() if value is not None}
    _fold_size(where, overrides)
    if check_size is not None and "res" in overrides:
        try:
            check_size(overrides["res"])
        except SanaError as exc:
            raise SanaError(f"{where}: {exc.message}", exc.hint) from None
    if check_line is not None:
        try:
            check_line(dict(overrides))
        except SanaError as exc:
            raise SanaError(f"{where}: {_as_key(exc.message, overrides)}", exc.hint) from None
    return PromptJob(prompt=prompt.strip(), overrides=overrides, line=number)


def _as_key(message: str, overrides: dict[str, Any]) -> str:
    """A command's error about a flag ("--cfg -1 must be ...") said of the line's key ("\"cfg\" -1 must be ...")."""
    for key in overrides:
        for flag in ("--" + key.replace("_", "-") + " ", *(("-o ",) if key == "out" else ())):
            if message.startswith(flag):
                return f'"{key}" ' + message[len(flag):]
    return message


def _checked(where: str, key: str, value: Any) -> Any:
    """The value with the type its flag takes, or a SanaError naming the line and key."""
    if key == "motion_score":  # a whole number, or "none" for nothing appended
        if isinstance(value, bool) or not (isinstance(value, int) and value >= 0 or value == "none"):
            raise SanaError(f"{where}: \"motion_score\" must be a whole number >= 0 or \"none\"")
        return str(value)
    if key == "seed":  # -1: a random one, as on the command line (A1111's convention)
        if isinstance(value, bool) or not isinstance(value, int) or value < -1:
            raise SanaError(f"{where}: \"seed\" must be an integer >= 0, or -1 for a random one")
        return value
    if key in INT_KEYS:
        lowest = 0 if key == "pag_layer" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise SanaError(f"{where}: \"{key}\" must be an integer >= {lowest}")
        return value
    if key in FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (key == "fps" and value <= 0):
            raise SanaError(f"{where}: \"{key}\" must be a number" + (" > 0" if key == "fps" else ""))
        return float(value)
    if key in STRING_KEYS:
        if not isinstance(value, str):
            raise SanaError(f"{where}: \"{key}\" must be a string")
        return value
    if key == "res":
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise SanaError(f"{where}: \"res\" must be a size such as 1024 or \"1536x1024\"")
        return str(value)
    return _lora_list(where, value)


def _lora_list(where: str, value: Any) -> list[str]:
    """LoRAs as the --lora flag takes them ("PATH[:SCALE]"), from a string, a list of strings or of objects."""
    entries = value if isinstance(value, list) else [value]
    result = []
    for entry in entries:
        if isinstance(entry, str) and entry:
            result.append(entry)
        elif isinstance(entry, dict) and isinstance(entry.get("path"), str) and set(entry) <= {"path", "scale"}:
            scale = entry.get("scale", 1.0)
            if isinstance(scale, bool) or not isinstance(scale, (int, float)):
                raise SanaError(f"{where}: a LoRA \"scale\" must be a number")
            result.append(f"{entry['path']}:{float(scale)}")
        else:
            raise SanaError(f"{where}: \"lora\" must be \"PATH[:SCALE]\", {{\"path\": ..., \"scale\": ...}} "
                            "or a list of them")
    return result


def _fold_size(where: str, overrides: dict[str, Any]) -> None:
    width, height = overrides.pop("width", None), overrides.pop("height", None)
    if width is None and height is None:
        return
    if "res" in overrides:
        raise SanaError(f"{where}: give \"res\" or \"width\"/\"height\", not both")
    if width is None or height is None:
        raise SanaError(f"{where}: give both \"width\" and \"height\"")
    overrides["res"] = f"{width}x{height}"
