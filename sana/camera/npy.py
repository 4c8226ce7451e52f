"""SANA-WM's own inputs: poses as .npy (F, 4, 4) camera-to-world in OpenCV axes, and intrinsics files.

Intrinsics are fx, fy, cx, cy in pixels of the conditioning image, given as .npy of shape (3, 3), (F, 3, 3),
(4,) or (F, 4), as text "fx,fy,cx,cy", or as a text file of 4 numbers (one line, or one line a frame).
Arrays are loaded with allow_pickle=False: a .npy never runs code.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UsageError
from .fields import read_bytes, sha256
from .path import MODEL_FPS, SourcePath, check_intrinsics_values, check_rigid, frame_times

NPY_MAGIC = b"\x93NUMPY"
INTRINSICS_SHAPES = "(3, 3), (F, 3, 3), (4,) or (F, 4) holding fx, fy, cx, cy in image pixels"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_FOUR_NUMBERS = re.compile(rf"\s*{_NUMBER}\s*(?:[,\s]\s*{_NUMBER}\s*){{3}}")


def load_array(path: Path, data: bytes, what: str) -> np.ndarray:
    """A numeric array from .npy bytes (never unpickled)."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        reason = "holds Python objects" if "allow_pickle" in str(exc) else "is not a valid .npy file"
        raise UsageError(f"{what} {path} {reason}; expected a numeric array") from None
    if not isinstance(array, np.ndarray) or not (np.issubdtype(array.dtype, np.floating)
                                                  or np.issubdtype(array.dtype, np.integer)):
        raise UsageError(f"{what} {path}: dtype {getattr(array, 'dtype', type(array).__name__)}; "
                         "expected a float array")
    return array.astype(np.float64)


def read_npy_poses(path: Path, data: bytes, fps: float = MODEL_FPS) -> SourcePath:
    """Poses [F, 4, 4] as given (OpenCV axes), consecutive frames at fps; no intrinsics of their own."""
    poses = load_array(path, data, "camera file")
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or poses.shape[0] == 0:
        raise UsageError(f"camera file {path}: shape {tuple(poses.shape)}; expected (F, 4, 4) camera-to-world "
                         "poses in OpenCV axes")
    check_rigid(poses, lambda i: f"camera file {path} pose [{i}]")
    return SourcePath(c2w=poses, times=frame_times(len(poses), fps), intrinsics=None)


def read_intrinsics(value: str | Path | np.ndarray | Sequence[float], name: str = "--intrinsics"
                    ) -> tuple[np.ndarray, str | None]:
    """Intrinsics as (4,) or (F, 4) fx, fy, cx, cy, and the sha256 of the file they came from (None if not a file).

    `value` is an array or sequence, "fx,fy,cx,cy" text, or the path of a .npy or text file.
    """
    digest = None
    where = name
    if isinstance(value, (str, Path)):
        text = str(value)
        if isinstance(value, str) and _FOUR_NUMBERS.fullmatch(text):
            array = np.array([float(v) for v in re.split(r"[,\s]+", text.strip())])
        elif isinstance(value, str) and (re.fullmatch(r"[\d\s,.eE+-]+", text)
                                         or ("," in text and not Path(text).exists())):
            # numbers (or words such as nan between commas) rather than a file name: said as such
            raise UsageError(f"{name} {text!r}: expected 4 numbers fx,fy,cx,cy (finite, in image pixels), or a file")
        else:
            path = Path(value)
            data = read_bytes(path, "intrinsics file")
            digest = sha256(data)
            where = f"{name} {path}"
            array = load_array(path, data, "intrinsics file") if data.startswith(NPY_MAGIC) \
                else _text_intrinsics(path, data)
    else:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: not numbers; expected {INTRINSICS_SHAPES}") from None
    return _as_vec4(array, where), digest


def _text_intrinsics(path: Path, data: bytes) -> np.ndarray:
    """Rows of 4 numbers (comma or space separated) from a text file; '#' starts a comment."""
    rows = []
    for number, line in enumerate(data.decode("utf-8-sig", errors="replace").splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not _FOUR_NUMBERS.fullmatch(line):
            raise UsageError(f"intrinsics file {path} line {number}: {line[:40]!r}; expected 4 numbers "
                             "fx, fy, cx, cy in image pixels")
        rows.append([float(v) for v in re.split(r"[,\s]+", line)])
    if not rows:
        raise UsageError(f"intrinsics file {path}: no numbers; expected fx, fy, cx, cy in image pixels")
    return np.array(rows[0] if len(rows) == 1 else rows)


def _as_vec4(array: np.ndarray, where: str) -> np.ndarray:
    """(3, 3) / (F, 3, 3) camera matrices or (4,) / (F, 4) vectors as (4,) / (F, 4) fx, fy, cx, cy."""
    if array.shape[-2:] == (3, 3) and array.ndim in (2, 3):
        k = array.reshape(-1, 3, 3)
        standard = np.abs(k[:, [1, 2, 2, 2], [0, 0, 1, 2]] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1) <= 1e-6
        skew_free = np.abs(k[:, 0, 1]) <= 1e-6 * np.abs(k[:, 0, 0])
        if not np.all(np.isfinite(k)) or not np.all(standard & skew_free):
            raise UsageError(f"{where}: not a pinhole camera matrix [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
        vec = np.stack([k[:, 0, 0], k[:, 1, 1], k[:, 0, 2], k[:, 1, 2]], axis=-1)
        vec = vec[0] if array.ndim == 2 else vec
    elif array.shape == (4,) or (array.ndim == 2 and array.shape[1] == 4 and array.shape[0] > 0):
        vec = array
    else:
        raise UsageError(f"{where}: shape {tuple(array.shape)}; expected {INTRINSICS_SHAPES}")
    check_intrinsics_values(vec, where)
    return vec.astype(np.float64)
