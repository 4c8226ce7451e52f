"""Writing a resolved path as `<name>.camera.json`: nerfstudio's camera-path format and sana's schema in one file.

The nerfstudio half (`camera_path`, `keyframes`, render size, `fps`, `seconds`, `camera_type`) loads in
nerfstudio's viewer ("Load Path") and renders with `ns-render camera-path`; its poses are OpenGL camera axes,
row-major, in a z-up world (the first camera level, looking along +y). The schema half (`frames` with OpenCV
`c2w` and pixel `intrinsics`) is exact: reading the file back through `resolve_camera` (which prefers `frames`)
gives the same path. Both halves describe the same poses at 16 fps.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .path import GL_TO_CV, CameraPath
from .schema import SCHEMA_FORMAT, SCHEMA_VERSION

SUFFIX = ".camera.json"
KEYFRAME_EVERY = 8  # viewer keyframes every half second: enough for its spline to follow the path

# OpenCV world of the first camera (x right, y down, z forward) to nerfstudio's z-up world (x right, y forward,
# z up). A signed permutation, so the round trip through it is exact.
CV_WORLD_TO_Z_UP = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def camera_json_path(output: str | Path) -> Path:
    """Where a clip's camera file goes: `out/clip.mp4` -> `out/clip.camera.json`."""
    output = Path(output)
    return output.with_name(output.name[: -len(output.suffix)] + SUFFIX if output.suffix else output.name + SUFFIX)


def nerfstudio_matrices(path: CameraPath) -> np.ndarray:
    """Camera-to-world [F, 4, 4] in OpenGL camera axes and a z-up world, as nerfstudio stores them."""
    return CV_WORLD_TO_Z_UP @ path.c2w @ GL_TO_CV


def camera_json(path: CameraPath, keyframe_every: int = KEYFRAME_EVERY, first: int = 0) -> dict[str, Any]:
    """The file's content: sana's schema and nerfstudio's camera path side by side at the top level.

    `first`: the path's first frame the clip shows (1 for a refined clip, whose refiner drops the frame stage 1
    began from). The schema half keeps the whole path, which a replay resolves again; nerfstudio's half renders
    the clip's frames alone, in the same world."""
    width, height = path.image_size
    fovs = path.vertical_fov_degrees()[first:]
    matrices = nerfstudio_matrices(path)[first:]
    fps = int(path.fps) if float(path.fps).is_integer() else path.fps
    shown = path.num_frames - first
    seconds = shown / path.fps
    keys = sorted(set(range(0, shown, keyframe_every)) | {shown - 1})
    step = keyframe_every / path.fps
    keyframes = []
    for i, frame in enumerate(keys):
        # the viewer times a keyframe by the transition that ends at it (the first one's counts only in a loop);
        # the last, into the path's final frame, may be shorter than the others
        transition = (frame - keys[i - 1]) / path.fps if i > 0 else step
        keyframes.append({"matrix": _flat(matrices[frame]), "fov": float(fovs[frame]), "aspect": width / height,
                          "override_transition_enabled": not math.isclose(transition, step),
                          "override_transition_sec": transition if not math.isclose(transition, step) else None})
    return {
        # sana's schema
        "format": SCHEMA_FORMAT,
        "version": SCHEMA_VERSION,
        "convention": "opencv",
        "fps": fps,
        "width": width,
        "height": height,
        "source": {"kind": path.source_kind, "source": path.source, "sha256": path.source_sha256, **path.params},
        "frames": [{"c2w": path.c2w[i].tolist(), "intrinsics": path.intrinsics[i].tolist()}
                   for i in range(path.num_frames)],
        **({"clip_starts_at_frame": first} if first else {}),
        # nerfstudio's camera path
        "camera_type": "perspective",
        "render_width": width,
        "render_height": height,
        "seconds": seconds,
        "default_fov": float(fovs[0]),
        "default_transition_sec": step,
        "is_cycle": False,
        "smoothness_value": 0.0,
        "keyframes": keyframes,
        "camera_path": [{"camera_to_world": _flat(matrices[i]), "fov": float(fovs[i]), "aspect": width / height}
                        for i in range(shown)],
    }


def camera_json_text(path: CameraPath, first: int = 0) -> str:
    return json.dumps(camera_json(path, first=first), indent=1) + "\n"


def camera_record(path: CameraPath, clip: str | Path, frames: int | None = None) -> tuple[dict[str, Any], str]:
    """What a clip's record says of its camera, and the text of its camera file. The record names the source, its
    sha256 and the settings it was resolved with, and the camera file beside the clip with that file's sha256, so
    a replay can tell the file was replaced (clips of one name in two formats share it) or edited. `frames`: the
    clip's, where fewer than the path's (a refined clip's first frame is dropped)."""
    text = camera_json_text(path, first=max(0, path.num_frames - frames) if frames else 0)
    source = path.source  # a file as its absolute path, so a replay finds it from any folder
    if path.source_kind != "actions" and Path(source).expanduser().is_file():
        source = str(Path(source).expanduser().resolve())
    extra = {"camera": source, "camera_sha256": path.source_sha256, "camera_kind": path.source_kind,
             "camera_file": camera_json_path(clip).name,
             "camera_file_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
             "camera_settings": dict(path.params)}
    return extra, text


def write_camera_json(path: CameraPath, dest: str | Path, text: str | None = None) -> Path:
    """Write the path (or `text`, `camera_record`'s) to dest, atomically: a partial file never appears under the
    final name."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_text(text if text is not None else camera_json_text(path), encoding="utf-8")
    os.replace(tmp, dest)
    return dest


def _flat(matrix: np.ndarray) -> list[float]:
    """Row-major 16 numbers."""
    return [float(v) for v in matrix.reshape(-1)]
