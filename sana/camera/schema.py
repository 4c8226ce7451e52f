"""sana's own camera-path JSON (documented in docs/camera-paths.md).

    {"fps": 16, "convention": "opencv", "interpolation": "spline", "fov": 60,
     "frames": [{"position": [0, 0, 0], "look_at": [0, 0, 1], "time": 0.0},
                {"c2w": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 1]], "time": 2.5}]}

A frame's pose is one of `c2w` (4x4 camera-to-world), `position` + `look_at` (+ `up`), or `position` +
`quaternion` (w, x, y, z: the camera-to-world rotation). `convention` names the camera axes of `c2w` and
`quaternion` (opencv: +x right, +y down, +z forward; opengl: +x right, +y up, +z back) and the default `up` of
`look_at` (opencv: [0, -1, 0]; opengl: [0, 1, 0]). Frames with `time` (seconds) are keyframes; without, they are
consecutive frames at `fps`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import UsageError
from .fields import choice, matrix4, number, vector
from .interpolate import INTERPOLATIONS, quaternion_to_matrix
from .path import (GL_TO_CV, MODEL_FPS, SourcePath, check_fov, check_intrinsics_values, check_rigid, frame_times,
                   intrinsics_from_fov, scale_intrinsics)

SCHEMA_FORMAT = "sana-camera-path"
SCHEMA_VERSION = 1
CONVENTIONS = ("opencv", "opengl")
FRAME_KEYS = ("c2w", "position", "look_at", "up", "quaternion", "fov", "intrinsics", "time")
DEFAULT_UP = {"opencv": [0.0, -1.0, 0.0], "opengl": [0.0, 1.0, 0.0]}
QUATERNION_TOLERANCE = 1e-2  # |q| may differ this much from 1 (rounded numbers); more means it is not a rotation


def is_schema(data: Any) -> bool:
    return isinstance(data, dict) and "frames" in data


def read_schema(data: dict[str, Any], path: Path, image_size: tuple[int, int]) -> SourcePath:
    """Poses in OpenCV camera axes, times (keyframe times or consecutive at fps), intrinsics in image pixels."""
    version = data.get("version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise UsageError(f"{path} field version: {version!r}; expected {SCHEMA_VERSION}")
    frames = data["frames"]
    if not isinstance(frames, list) or not frames or not all(isinstance(frame, dict) for frame in frames):
        raise UsageError(f"{path} field frames: expected a non-empty list of objects, each with \"c2w\", "
                         "\"position\" + \"look_at\" or \"position\" + \"quaternion\"")
    convention = choice(data.get("convention", "opencv"), f"{path} field convention", CONVENTIONS)
    interpolation = choice(data.get("interpolation", "spline"), f"{path} field interpolation", INTERPOLATIONS)

    c2w = np.stack([_pose(frame, f"{path} field frames[{i}]", convention) for i, frame in enumerate(frames)])
    check_rigid(c2w, lambda i: f"{path} field frames[{i}]")
    notices: list[str] = []
    return SourcePath(c2w=c2w, times=_times(data, frames, path), interpolation=interpolation, notices=notices,
                      intrinsics=_intrinsics(data, frames, path, image_size, notices))


# ----------------------------------------------------------------------------------------------------------------
# Poses
# ----------------------------------------------------------------------------------------------------------------

def _pose(frame: dict[str, Any], where: str, convention: str) -> np.ndarray:
    """The frame's camera-to-world [4, 4] in OpenCV camera axes."""
    unknown = sorted(set(frame) - set(FRAME_KEYS))
    if unknown:
        raise UsageError(f"{where}: unknown key {', '.join(map(repr, unknown))}; expected {', '.join(FRAME_KEYS)}")
    has = {key for key in ("c2w", "position", "look_at", "quaternion") if key in frame}
    if "up" in frame and has != {"position", "look_at"}:
        raise UsageError(f"{where}.up: only used with \"look_at\"; expected it beside \"position\" + \"look_at\"")
    if has == {"c2w"}:
        pose = matrix4(frame["c2w"], f"{where}.c2w")
        return pose @ GL_TO_CV if convention == "opengl" else pose
    if has == {"position", "quaternion"}:
        pose = np.eye(4)
        pose[:3, :3] = _quaternion(frame["quaternion"], f"{where}.quaternion")
        pose[:3, 3] = vector(frame["position"], f"{where}.position", 3, "x, y, z")
        return pose @ GL_TO_CV if convention == "opengl" else pose
    if has == {"position", "look_at"}:
        up = frame.get("up", DEFAULT_UP[convention])
        return look_at(vector(frame["position"], f"{where}.position", 3, "x, y, z"),
                       vector(frame["look_at"], f"{where}.look_at", 3, "x, y, z"),
                       vector(up, f"{where}.up", 3, "x, y, z"), where)
    raise UsageError(f"{where}: pose given as {', '.join(sorted(has)) or 'nothing'}; expected exactly one of "
                     "\"c2w\", \"position\" + \"look_at\" (+ \"up\"), \"position\" + \"quaternion\" (w, x, y, z)")


def _quaternion(value: Any, where: str) -> np.ndarray:
    q = vector(value, where, 4, "w, x, y, z")
    norm = float(np.linalg.norm(q))
    if abs(norm - 1.0) > QUATERNION_TOLERANCE:
        raise UsageError(f"{where}: length {norm:.4g}; expected a unit quaternion (w, x, y, z)")
    return quaternion_to_matrix(q[None])[0]


def look_at(position: np.ndarray, target: np.ndarray, up: np.ndarray, where: str) -> np.ndarray:
    """Camera-to-world [4, 4] in OpenCV axes of a camera at `position` looking at `target`, its image up along `up`."""
    forward = target - position
    if np.linalg.norm(forward) < 1e-9:
        raise UsageError(f"{where}: look_at equals position; expected a point the camera looks at")
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    if np.linalg.norm(right) < 1e-6 * max(np.linalg.norm(up), 1e-300):
        raise UsageError(f"{where}: the view direction is parallel to up {up.tolist()}; expected another \"up\"")
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)  # OpenCV's +y points down the image
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = position
    return pose


# ----------------------------------------------------------------------------------------------------------------
# Timing and intrinsics
# ----------------------------------------------------------------------------------------------------------------

def _times(data: dict[str, Any], frames: list[dict[str, Any]], path: Path) -> np.ndarray:
    """Keyframe times when frames carry "time", else consecutive frames at "fps" (default 16)."""
    timed = ["time" in frame for frame in frames]
    if not any(timed):
        fps = number(data.get("fps", MODEL_FPS), f"{path} field fps", positive=True)
        return frame_times(len(frames), fps)
    if not all(timed):
        i = timed.index(False)
        raise UsageError(f"{path} field frames[{i}].time: missing while other frames have one; expected a time on "
                         "every frame (keyframes) or on none (consecutive frames at fps)")
    times = np.array([number(frame["time"], f"{path} field frames[{i}].time") for i, frame in enumerate(frames)])
    bad = np.flatnonzero(np.diff(times) <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise UsageError(f"{path} field frames[{i}].time: {times[i]:g} s; expected a time after the previous "
                         f"frame's {times[i - 1]:g} s")
    return times


def _intrinsics(data: dict[str, Any], frames: list[dict[str, Any]], path: Path, image_size: tuple[int, int],
                notices: list[str]) -> np.ndarray | None:
    """[N, 4] pixel intrinsics of the conditioning image; None when neither the frames nor the file give any."""
    size = None
    if any("intrinsics" in item for item in [data, *frames]):
        size = (number(data.get("width"), f"{path} field width", positive=True),
                number(data.get("height"), f"{path} field height", positive=True))
        if abs(size[0] / size[1] - image_size[0] / image_size[1]) > 0.01 * image_size[0] / image_size[1]:
            notices.append(f"{path.name} gives intrinsics for {size[0]:g}x{size[1]:g} but the image is "
                           f"{image_size[0]}x{image_size[1]}; they are scaled per axis")
    default = _frame_intrinsics(data, lambda key: f"{path} field {key}", size, image_size)
    rows = []
    for i, frame in enumerate(frames):
        own = _frame_intrinsics(frame, lambda key: f"{path} field frames[{i}].{key}", size, image_size)
        rows.append(own if own is not None else default)
    if all(row is None for row in rows):
        return None
    if any(row is None for row in rows):
        i = next(i for i, row in enumerate(rows) if row is None)
        raise UsageError(f"{path} field frames[{i}]: no fov or intrinsics while other frames have them; expected "
                         "one on every frame, or a file-wide \"fov\" / \"intrinsics\"")
    return np.stack(rows)


def _frame_intrinsics(item: dict[str, Any], where: Callable[[str], str], size: tuple[float, float] | None,
                      image_size: tuple[int, int]) -> np.ndarray | None:
    """An object's own "fov" or "intrinsics" as image pixels, or None when it has neither."""
    if "fov" in item and "intrinsics" in item:
        raise UsageError(f"{where('fov')}: given with intrinsics; expected one of them")
    if "fov" in item:
        return intrinsics_from_fov(check_fov(item["fov"], where("fov")), *image_size)
    if "intrinsics" in item:
        values = vector(item["intrinsics"], where("intrinsics"), 4, "fx, fy, cx, cy in pixels of width x height")
        check_intrinsics_values(values, where("intrinsics"))
        assert size is not None  # read whenever any intrinsics are present
        return scale_intrinsics(values, size, image_size)
    return None
