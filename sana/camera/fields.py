"""Reading camera files and typed JSON fields, each failure a one-line UsageError naming the file and the field."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError


def read_bytes(path: Path, what: str = "camera file") -> bytes:
    """The file's bytes, or a UsageError saying why it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a directory; expected a file") from None
    except OSError as exc:
        raise UsageError(f"{what} {path} cannot be read ({exc.strerror})") from None


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_json(path: Path, data: bytes) -> Any:
    """Parsed JSON, or a UsageError with the line and column of the first syntax error."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text; expected a JSON camera path") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path} line {exc.lineno} column {exc.colno}: malformed JSON ({exc.msg})") from None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(value: Any, where: str, *, positive: bool = False) -> float:
    """A finite JSON number (positive if asked)."""
    if not is_number(value):
        raise UsageError(f"{where}: {_shown(value)}; expected a number")
    if not math.isfinite(value):
        raise UsageError(f"{where}: {value}; expected a finite number")
    if positive and value <= 0:
        raise UsageError(f"{where}: {value}; expected a number above 0")
    return float(value)


def vector(value: Any, where: str, length: int, meaning: str) -> np.ndarray:
    """A list of `length` finite numbers."""
    if not isinstance(value, list) or len(value) != length or not all(is_number(v) for v in value):
        raise UsageError(f"{where}: {_shown(value)}; expected {length} numbers ({meaning})")
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise UsageError(f"{where}: holds NaN or infinite values; expected finite numbers ({meaning})")
    return array


def matrix4(value: Any, where: str) -> np.ndarray:
    """A 4x4 (or 3x4, completed with 0 0 0 1) matrix given as nested rows or as 16 (12) numbers, row-major."""
    expected = "a 4x4 matrix: 4 rows of 4 numbers, or 16 numbers row-major"
    if isinstance(value, list) and value and all(isinstance(row, list) for row in value):
        if len(value) not in (3, 4) or any(len(row) != 4 for row in value):
            shape = [len(row) for row in value]
            raise UsageError(f"{where}: {len(value)} rows of {shape} numbers; expected {expected}")
        flat = [v for row in value for v in row]
    else:
        flat = value
    if not isinstance(flat, list) or len(flat) not in (12, 16) or not all(is_number(v) for v in flat):
        raise UsageError(f"{where}: {_shown(value)}; expected {expected}")
    array = np.asarray(flat, dtype=np.float64).reshape(-1, 4)
    if not np.all(np.isfinite(array)):
        raise UsageError(f"{where}: holds NaN or infinite values; expected finite numbers")
    if array.shape[0] == 3:
        array = np.vstack([array, [0.0, 0.0, 0.0, 1.0]])
    return array


def choice(value: Any, where: str, options: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in options:
        raise UsageError(f"{where}: {_shown(value)}; expected one of {', '.join(options)}")
    return value.lower()


def _shown(value: Any) -> str:
    """A short rendering of a bad value for a message."""
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
