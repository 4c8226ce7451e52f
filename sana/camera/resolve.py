"""One resolver for every camera input of `sana world`: a file (`--camera`) or an action string (`--actions`).

Every source becomes the same `CameraPath`: read (the kind detected from the file's content), resampled to
16 fps where its timing differs, re-anchored so the first pose is the identity, translations multiplied by
`pose_scale`, intrinsics chosen (explicit `intrinsics` or `fov`, else the path's own, else an error), and the frame
count snapped to 8k+1. Numpy only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import UsageError
from .actions import DEFAULT_SPEED, DEFAULT_TURN_RATE, actions_sha256, actions_to_c2w
from .fields import load_json, read_bytes, sha256
from .interpolate import grid_frame_count, resample_path
from .nerfstudio import is_nerfstudio, read_nerfstudio
from .npy import NPY_MAGIC, read_intrinsics, read_npy_poses
from .path import (MAX_WORLD_FRAMES, MODEL_FPS, CameraPath, SourcePath, anchor_to_first, check_finite, check_fov,
                   frame_times, intrinsics_from_fov, snap_num_frames)
from .realestate import FIELDS as REALESTATE_FIELDS
from .realestate import read_realestate
from .schema import is_schema, read_schema

KINDS_HELP = ("nerfstudio camera_path.json, a sana camera JSON with \"frames\", (F, 4, 4) poses .npy, "
              "or a RealEstate10K / CameraCtrl .txt")
NO_INTRINSICS_HINT = "pass --fov (vertical degrees) or --intrinsics (fx,fy,cx,cy in image pixels, or a K .npy)"


def resolve_camera(camera: str | Path | None = None, *, actions: str | None = None, image_size: tuple[int, int],
                   intrinsics: str | Path | np.ndarray | Sequence[float] | None = None, fov: float | None = None,
                   num_frames: int | None = None, pose_scale: float = 1.0, speed: float = DEFAULT_SPEED,
                   turn_rate: float = DEFAULT_TURN_RATE, source_fps: float | None = None) -> CameraPath:
    """The camera path SANA-WM will follow.

    camera: a camera file (kind detected from its content: see KINDS_HELP); or actions: an action string.
    image_size: (width, height) of the conditioning image; intrinsics come out in its pixels.
    intrinsics / fov: replace the path's own intrinsics (a path without any needs one of them); intrinsics as in
        `npy.read_intrinsics`, fov the image's vertical field of view in degrees.
    num_frames: frames wanted (None: all the path gives, up to MAX_WORLD_FRAMES; `path_frames` says how many it
        gives); snapped to 8k+1 within the path's length.
    pose_scale: multiplies translations (for paths not in metres). speed / turn_rate: units and degrees a frame
        for actions. source_fps: frame rate of .npy poses (default 16).
    """
    width, height = _checked_args(camera, actions, image_size, intrinsics, fov, num_frames, pose_scale, speed,
                                  turn_rate, source_fps)
    image_size = (width, height)
    params: dict = {"pose_scale": float(pose_scale)}

    # 1. read the source
    if actions is not None:
        poses = actions_to_c2w(actions, speed=speed, turn_rate=turn_rate)
        source = SourcePath(c2w=poses, times=frame_times(len(poses), MODEL_FPS), intrinsics=None)
        kind, name, label, digest = "actions", actions, f"--actions {actions!r}", actions_sha256(actions)
        params.update(speed=float(speed), turn_rate=float(turn_rate))
    else:
        kind, source, digest = _read_file(Path(camera).expanduser(), image_size, source_fps)
        name = label = str(camera)
        if source_fps is not None:
            params["source_fps"] = float(source_fps)
    notices = list(source.notices)

    # 2. resample to the model's frame rate unless the poses already sit on its grid
    c2w, own = source.c2w, source.intrinsics
    times = source.times - source.times[0]
    grid = frame_times(len(times), MODEL_FPS)
    resampled = len(times) != len(grid) or not np.allclose(times, grid, rtol=0.0, atol=1e-9)
    available = grid_frame_count(float(times[-1])) if resampled else len(times)

    # 3. frame count: what was asked for (or everything, up to the longest clip), snapped to 8k+1 without running
    #    past the path; only those frames are ever built (a path may span hours: times in microseconds, a tiny
    #    --camera-fps)
    if num_frames is not None and num_frames > available:
        raise UsageError(f"{label}: the path gives {available} frames at {MODEL_FPS:g} fps; {num_frames} were asked "
                         "for", "ask for fewer frames, or give a longer path")
    wanted = min(available, MAX_WORLD_FRAMES) if num_frames is None else num_frames
    count = snap_num_frames(wanted, upper_bound=available)
    if count != wanted:
        notices.append(f"{wanted} frames -> {count}: SANA-WM generates 8k+1 frames")
    if resampled:
        new_times = np.arange(count) / MODEL_FPS
        c2w, own = resample_path(times, c2w, own, new_times, source.interpolation)
        positions = "Catmull-Rom" if source.interpolation == "spline" else "linear"
        notices.append(f"{Path(label).name}: {len(times)} poses over {times[-1]:.2f} s resampled to "
                       f"{available} frame{'s' if available != 1 else ''} at {MODEL_FPS:g} fps ({positions} positions, "
                       "slerp rotations)")
    c2w = c2w[:count]
    own = own[:count] if own is not None else None

    # 4. re-anchor on the first pose, then scale translations
    c2w = anchor_to_first(c2w)
    c2w[:, :3, 3] *= pose_scale

    # 5. intrinsics: explicit ones win, then the path's own, then none (an error)
    if intrinsics is not None:
        values, intrinsics_digest = read_intrinsics(intrinsics)
        if values.ndim == 2 and resampled and len(values) == len(times):
            # a row for each pose of the source: resampled with the poses, as a path's own intrinsics are
            values = np.stack([np.interp(new_times, times, column) for column in values.T], axis=1)
            notices.append(f"--intrinsics: its {len(times)} rows (one a pose) resampled with the poses")
        if values.ndim == 2 and len(values) < count:
            shown = f"--intrinsics {intrinsics}" if isinstance(intrinsics, (str, Path)) else "--intrinsics"
            raise UsageError(f"{shown}: {len(values)} rows for {count} frames; expected (4,) or at least "
                             f"{count} rows of fx, fy, cx, cy")
        chosen = np.broadcast_to(values, (count, 4)) if values.ndim == 1 else values[:count]
        params["intrinsics"] = "--intrinsics"
        if intrinsics_digest is not None:
            params["intrinsics_sha256"] = intrinsics_digest
        if values.ndim == 1:  # the values themselves, so a replay without the camera file needs no flag
            params["intrinsics_values"] = [float(v) for v in values]
    elif fov is not None:
        chosen = np.broadcast_to(intrinsics_from_fov(fov, width, height), (count, 4))
        params.update(intrinsics="--fov", fov=float(fov))
    elif own is not None:
        chosen = own
        params.update(intrinsics="path")
    else:
        has = "actions carry" if kind == "actions" else "the camera path has"
        raise UsageError(f"{label}: {has} no intrinsics", NO_INTRINSICS_HINT)
    if own is not None and (intrinsics is not None or fov is not None):
        notices.append(f"{'--intrinsics' if intrinsics is not None else '--fov'} replaces the intrinsics in {label}")
    chosen = np.array(chosen, dtype=np.float64)

    check_finite(c2w, f"{label}: resolved poses")
    check_finite(chosen, f"{label}: resolved intrinsics")
    return CameraPath(c2w=c2w, intrinsics=chosen, image_size=image_size, fps=MODEL_FPS, source_kind=kind,
                      source=name, source_sha256=digest, notices=tuple(notices), params=params,
                      path_frames=available)


def _checked_args(camera, actions, image_size, intrinsics, fov, num_frames, pose_scale, speed, turn_rate,
                  source_fps) -> tuple[int, int]:
    """The image size as ints, after refusing contradictory or out-of-range arguments."""
    if (camera is None) == (actions is None):
        raise UsageError("give a camera path (--camera FILE) or actions (--actions \"w-80,jw-40\"), exactly one")
    if isinstance(camera, str) and not camera.strip():  # Path("") is ".", which would read as a directory
        raise UsageError("--camera: an empty path; expected a camera file")
    if intrinsics is not None and fov is not None:
        raise UsageError("--intrinsics and --fov both given; expected one of them")
    if fov is not None:
        check_fov(fov, "--fov")
    try:
        width, height = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise UsageError(f"image size {image_size!r}; expected (width, height)") from None
    if width <= 0 or height <= 0:
        raise UsageError(f"image size {width}x{height}; expected positive width and height")
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, int)
                                   or num_frames < 1):
        raise UsageError(f"--frames {num_frames!r}; expected a whole number >= 1")
    for flag, value in (("--pose-scale", pose_scale), ("--speed", speed), ("--turn-rate", turn_rate)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise UsageError(f"{flag} {value!r}; expected a number above 0")
    if source_fps is not None and actions is not None:
        raise UsageError("--camera-fps applies to .npy poses; actions make one frame a step at 16 fps")
    if source_fps is not None and (not math.isfinite(source_fps) or source_fps <= 0):
        raise UsageError(f"--camera-fps {source_fps!r}; expected a number above 0")
    return width, height


def _read_file(path: Path, image_size: tuple[int, int], source_fps: float | None) -> tuple[str, SourcePath, str]:
    """(kind, source path, sha256) of a camera file, its kind told by its content."""
    data = read_bytes(path)
    digest = sha256(data)
    if data.startswith(NPY_MAGIC):
        return "npy", read_npy_poses(path, data, source_fps or MODEL_FPS), digest
    if source_fps is not None:
        raise UsageError(f"--camera-fps applies to .npy poses only; {path} carries its own timing")
    if path.suffix.lower() == ".npy":
        raise UsageError(f"camera file {path} is not a .npy array; expected (F, 4, 4) camera-to-world poses")
    head = data.lstrip()[:1]
    if head in (b"{", b"[") or path.suffix.lower() == ".json":
        parsed = load_json(path, data)
        if is_schema(parsed):
            return "schema", read_schema(parsed, path, image_size), digest
        if is_nerfstudio(parsed):
            return "nerfstudio", read_nerfstudio(parsed, path, image_size), digest
        raise UsageError(f"{path}: a JSON file without \"frames\" or \"camera_path\"; expected {KINDS_HELP}")
    if path.suffix.lower() == ".txt" or _looks_like_realestate(data):
        return "realestate10k", read_realestate(path, data, image_size), digest
    raise UsageError(f"{path}: not a camera path kind sana reads; expected {KINDS_HELP}")


def _looks_like_realestate(data: bytes) -> bool:
    """True when the second non-empty line has 19 whitespace-separated fields."""
    try:
        lines = [line for line in data.decode("utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        return False
    return len(lines) >= 2 and len(lines[1].split()) == REALESTATE_FIELDS
