"""The generation record every output carries, and its A1111 "parameters" text form.

The JSON form (`to_json` / `from_json`) is the full record; the A1111 text (`to_a1111` / `from_a1111`) is the
copy other tools read, and the one we fall back to for files written by them.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import SanaError

# The reader regex A1111 and the tools that follow it use for the last line of "parameters".
A1111_PARAM_RE = re.compile(r"""\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)""")
NEGATIVE_PREFIX = "Negative prompt:"
VERSION_PREFIX = "sana "

_INT_FIELDS = ("seed", "steps", "width", "height", "frames")
_FLOAT_FIELDS = ("guidance", "pag", "flow_shift", "fps")


@dataclass
class GenerationRecord:
    """Everything needed to replay one image or clip; None where a foreign file did not say.

    Clips set `frames` and `fps`. Clip facts that only some runs have live in `extra`, under these keys:
    "motion_score" (SANA-Video's motion score), "image" and "image_sha256" (the first frame of an image-to-video
    run), "camera" and "camera_sha256" (the camera path of a world-model run), "crf" (the H.264 quality an MP4
    was encoded at).
    """

    prompt: str
    negative_prompt: str = ""
    model: str | None = None  # registry name, repo id or directory, as given
    model_repo: str | None = None
    model_revision: str | None = None
    family: str | None = None  # the model family, e.g. "sana", "sana1.5", "sprint"
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None  # CFG scale
    pag: float = 0.0  # PAG scale, 0 = off
    pag_layers: list[int] = field(default_factory=list)
    sampler: str | None = None  # "flow-dpm", "flow-euler" or "scm"
    flow_shift: float | None = None
    width: int | None = None
    height: int | None = None
    frames: int | None = None  # clips only: the frame count
    fps: float | None = None  # clips only: frames per second
    dtype: str | None = None
    loras: list[dict[str, Any]] = field(default_factory=list)  # {"path", "scale", "sha256"?}
    version: str | None = None  # sana version that wrote it
    timings: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=indent)

    @classmethod
    def from_json(cls, text: str) -> GenerationRecord:
        """Parse a JSON record; unknown keys (from newer versions) are ignored."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise SanaError(f"the metadata is not valid JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("prompt"), str):
            raise SanaError("the metadata JSON has no prompt")
        known = {f.name for f in fields(cls)}
        values = {}
        for key, value in data.items():
            if key in known and value is not None:
                values[key] = _coerce_field(key, value)
        return cls(**values)

    def to_a1111(self) -> str:
        """The A1111 "parameters" text: prompt lines, "Negative prompt: ..." when set, then a "Key: value" line."""
        params: list[tuple[str, Any]] = [
            ("Steps", self.steps),
            ("Sampler", self.sampler),
            ("CFG scale", self.guidance),
        ]
        if self.pag:
            params += [("PAG scale", self.pag), ("PAG layers", ",".join(str(layer) for layer in self.pag_layers))]
        params += [
            ("Seed", self.seed),
            ("Size", f"{self.width}x{self.height}" if self.width and self.height else None),
            ("Frames", self.frames),
            ("FPS", self.fps),
            ("Model", self.model),
            ("Model repo", self.model_repo),
            ("Model revision", self.model_revision),
            ("Family", self.family),
            ("Flow shift", self.flow_shift),
            ("Dtype", self.dtype),
            ("LoRAs", ", ".join(f"{lora['path']}:{lora.get('scale', 1.0)}" for lora in self.loras)),
            ("Version", f"{VERSION_PREFIX}{self.version}" if self.version else None),
        ]
        line = ", ".join(f"{key}: {_a1111_value(value)}" for key, value in params if value not in (None, ""))
        lines = [self.prompt]
        if self.negative_prompt:
            lines.append(f"{NEGATIVE_PREFIX} {self.negative_prompt}")
        if line:
            lines.append(line)
        return "\n".join(lines)

    @classmethod
    def from_a1111(cls, text: str) -> GenerationRecord:
        """Best-effort record from A1111 "parameters" text; keys we do not map are kept in extra["a1111"]."""
        parsed = parse_a1111(text)
        params = {k: v for k, v in parsed.items() if k not in ("Prompt", "Negative prompt")}
        ours = params.get("Version", "").startswith(VERSION_PREFIX)
        record = cls(prompt=parsed["Prompt"], negative_prompt=parsed["Negative prompt"])
        unmapped: dict[str, str] = {}
        for key, value in params.items():
            try:
                if not _apply_a1111_param(record, key, value, ours):
                    unmapped[key] = value
            except ValueError:
                unmapped[key] = value
        if unmapped:
            record.extra["a1111"] = unmapped
        return record


def _coerce_field(key: str, value: Any) -> Any:
    """Types as the dataclass declares them, so a hand-edited record fails here rather than mid-run."""
    try:
        if key in _INT_FIELDS:
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            return int(value)
        if key in _FLOAT_FIELDS:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if key == "pag_layers":
            return [int(layer) for layer in value]
        if key == "loras":
            if not all(isinstance(lora, dict) and "path" in lora for lora in value):
                raise ValueError
            return [dict(lora) for lora in value]
        if key == "timings":
            return {str(phase): float(seconds) for phase, seconds in dict(value).items()}
        if key == "extra":
            if not isinstance(value, dict):
                raise ValueError
            return dict(value)
        return value if isinstance(value, str) else str(value)
    except (TypeError, ValueError):
        raise SanaError(f"the metadata field '{key}' has a bad value: {value!r}") from None


def _a1111_value(value: Any) -> str:
    """A value for the "Key: value" line; JSON-quoted where the reader regex would otherwise split it."""
    text = repr(value) if isinstance(value, float) else str(value)
    if any(c in text for c in ",:\n\r") or text != text.strip() or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def parse_a1111(text: str) -> dict[str, str]:
    """Split A1111 "parameters" text into {"Prompt", "Negative prompt", and each "Key": value}, values unquoted.

    Follows A1111's own reader: the last line holds the parameters only when the regex finds at least three
    pairs in it; otherwise it is part of the prompt.
    """
    lines = text.strip().split("\n")
    params: dict[str, str] = {}
    if len(lines) and len(A1111_PARAM_RE.findall(lines[-1])) >= 3:
        for key, value in A1111_PARAM_RE.findall(lines.pop()):
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass  # a quoted value that is not valid JSON is kept as written
            params[key.strip()] = value
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        if not negative_lines and line.startswith(NEGATIVE_PREFIX):
            negative_lines.append(line[len(NEGATIVE_PREFIX):].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)
    return {"Prompt": "\n".join(prompt_lines).strip(), "Negative prompt": "\n".join(negative_lines).strip(), **params}


def _apply_a1111_param(record: GenerationRecord, key: str, value: str, ours: bool) -> bool:
    """Set the field a parameter maps to; False when it has none. Raises ValueError on a bad number."""
    if key == "Steps":
        record.steps = int(value)
    elif key == "CFG scale":
        record.guidance = float(value)
    elif key == "Seed":
        record.seed = int(value)
    elif key == "Size":
        width, height = value.lower().split("x")
        record.width, record.height = int(width), int(height)
    elif key == "Frames":
        record.frames = int(value)
    elif key == "FPS":
        record.fps = float(value)
    elif not ours:
        # Another tool's sampler, model and version names mean nothing to our pipelines: kept, not mapped.
        return False
    elif key == "Sampler":
        record.sampler = value
    elif key == "PAG scale":
        record.pag = float(value)
    elif key == "PAG layers":
        record.pag_layers = [int(layer) for layer in re.split(r"[,\s]+", value) if layer]
    elif key == "Model":
        record.model = value
    elif key == "Model repo":
        record.model_repo = value
    elif key == "Model revision":
        record.model_revision = value
    elif key == "Family":
        record.family = value
    elif key == "Flow shift":
        record.flow_shift = float(value)
    elif key == "Dtype":
        record.dtype = value
    elif key == "LoRAs":
        record.loras = []
        for entry in value.split(", "):
            path, _, scale = entry.rpartition(":")
            record.loras.append({"path": path, "scale": float(scale)})
    elif key == "Version":
        record.version = value[len(VERSION_PREFIX):]
    else:
        return False
    return True


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB pieces (for the inputs a record names: LoRAs, images, cameras)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
