"""nerfstudio's `camera_path.json` (the viewer's export, the input of `ns-render camera-path`).

Read as `ns-render` reads it: `camera_path[i].camera_to_world` is a row-major 4x4 camera-to-world in OpenGL camera
axes (+x right, +y up, +z back), `fov` the vertical field of view in degrees, focal f = (render_height / 2) /
tan(fov / 2) for both axes, principal point at the render's centre. The entries are consecutive frames of a clip
lasting `seconds` (so at len(camera_path) / seconds fps), or at `fps` when `seconds` is missing. `keyframes`,
`smoothness_value`, `crop` and `render_time` only matter to the viewer or to dynamic scenes and are not read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError
from .fields import matrix4, number
from .path import GL_TO_CV, SourcePath, check_fov, check_rigid, frame_times, intrinsics_from_fov, scale_intrinsics

CAMERA_TYPES_REFUSED = ("fisheye", "equirectangular", "omnidirectional", "vr180")


def is_nerfstudio(data: Any) -> bool:
    return isinstance(data, dict) and "camera_path" in data


def read_nerfstudio(data: dict[str, Any], path: Path, image_size: tuple[int, int]) -> SourcePath:
    """Poses in OpenCV camera axes (c2w @ diag(1, -1, -1, 1)), times, and intrinsics scaled to image_size."""
    camera_type = data.get("camera_type", "perspective")
    if not isinstance(camera_type, str) or camera_type.lower() != "perspective":
        article = "an" if isinstance(camera_type, str) and camera_type[:1].lower() in "aeiou" else "a"
        kind = f"{article} {camera_type}" if isinstance(camera_type, str) and camera_type else repr(camera_type)
        raise UsageError(f"{path} field camera_type: {kind} camera; expected \"perspective\" "
                         "(SANA-WM models a pinhole camera)")
    entries = data["camera_path"]
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{path} field camera_path: expected a non-empty list of "
                         "{\"camera_to_world\": 16 numbers, \"fov\": degrees}")
    gl = np.stack([matrix4(_entry(entries, i, path).get("camera_to_world"), f"{path} field camera_path[{i}]"
                           ".camera_to_world") for i in range(len(entries))])
    check_rigid(gl, lambda i: f"{path} field camera_path[{i}].camera_to_world")
    c2w = gl @ GL_TO_CV

    notices: list[str] = []
    times = frame_times(len(entries), _frame_rate(data, len(entries), path))
    intrinsics = _intrinsics(data, entries, path, image_size, notices)
    return SourcePath(c2w=c2w, times=times, intrinsics=intrinsics, interpolation="linear", notices=notices)


def _entry(entries: list, i: int, path: Path) -> dict[str, Any]:
    entry = entries[i]
    if not isinstance(entry, dict):
        raise UsageError(f"{path} field camera_path[{i}]: expected an object with camera_to_world and fov")
    return entry


def _frame_rate(data: dict[str, Any], count: int, path: Path) -> float:
    """Frames a second: len(camera_path) / seconds as ns-render plays it, else fps."""
    if data.get("seconds") is not None:
        seconds = number(data["seconds"], f"{path} field seconds", positive=True)
        return count / seconds
    if data.get("fps") is not None:
        return number(data["fps"], f"{path} field fps", positive=True)
    raise UsageError(f"{path}: no \"seconds\" or \"fps\"; expected the clip's length or frame rate")


def _intrinsics(data: dict[str, Any], entries: list, path: Path, image_size: tuple[int, int],
                notices: list[str]) -> np.ndarray | None:
    """Per-frame pixel intrinsics of the conditioning image, or None when no field of view is given."""
    default_fov = data.get("default_fov")
    fovs = []
    for i, entry in enumerate(entries):
        value = entry.get("fov", default_fov)
        if value is None:
            return None
        where = f"{path} field camera_path[{i}].fov" if "fov" in entry else f"{path} field default_fov"
        fovs.append(check_fov(value, where))
    render = (number(data.get("render_width"), f"{path} field render_width", positive=True),
              number(data.get("render_height"), f"{path} field render_height", positive=True))
    if abs(render[0] / render[1] - image_size[0] / image_size[1]) > 0.01 * image_size[0] / image_size[1]:
        notices.append(f"{path.name} renders at {render[0]:g}x{render[1]:g} but the image is "
                       f"{image_size[0]}x{image_size[1]}; its intrinsics are scaled per axis")
    intrinsics = intrinsics_from_fov(np.asarray(fovs), *render)
    return scale_intrinsics(intrinsics, render, image_size)

