"""`sana world`'s camera path: what the resolver reads (--camera, --actions, or --from's clip: the camera file
written beside it, else the source and settings the clip recorded) and the path resolved from it. Numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sana.camera.path import MAX_WORLD_FRAMES
from sana.errors import UsageError

from . import console

# Resolver options: flag name -> `resolve_camera` keyword.
CAMERA_OPTIONS = {"intrinsics": "intrinsics", "fov": "fov", "pose_scale": "pose_scale", "speed": "speed",
                  "turn_rate": "turn_rate", "camera_fps": "source_fps"}


@dataclass(frozen=True)
class CameraSource:
    """What `resolve_camera` reads: a file or an action string, and the resolver options."""

    camera: str | None
    actions: str | None
    options: dict[str, Any]


def camera_source(flags: dict[str, Any], record, from_path: Path | None) -> CameraSource:
    """--camera / --actions as given; without them, --from's clip: the camera file written beside it (the same
    poses and intrinsics) while it is the one the clip recorded, else its recorded source with the recorded
    settings."""
    explicit = {key: flags[flag] for flag, key in CAMERA_OPTIONS.items() if flags.get(flag) is not None}
    if flags.get("camera") is not None or flags.get("actions") is not None or record is None:
        camera = flags.get("camera")
        _refuse_action_options(explicit, camera is not None, "--camera FILE")
        return CameraSource(str(camera) if camera is not None else None, flags.get("actions"), explicit)
    from sana.camera.export import camera_json_path
    from sana.outputs import file_sha256

    extra = record.extra
    # The camera file beside the clip under its name now (a renamed or copied clip took its file along), else
    # under the name it was written with; the first whose sha256 is the one recorded.
    beside = [camera_json_path(from_path)]
    if extra.get("camera_file"):
        beside.append(from_path.parent / extra["camera_file"])
    written = extra.get("camera_file_sha256")
    for candidate in dict.fromkeys(beside):
        if not candidate.is_file():
            continue
        if written is None or file_sha256(candidate) == written:
            _refuse_action_options(explicit, True, f"a replay of {from_path.name}'s camera file")
            return CameraSource(str(candidate), None, explicit)
        console.notice(f"{candidate} is not the camera file written with {from_path.name} (replaced or edited "
                       "since); it is not followed")
    resolved = next((c for c in beside if c.is_file()), beside[0])  # named in the error below
    source, kind = extra.get("camera"), extra.get("camera_kind")
    settings = extra.get("camera_settings") or {}
    recorded = {key: value for key, value in settings.items()
                if key in ("pose_scale", "speed", "turn_rate", "fov", "source_fps")}
    if settings.get("intrinsics_values") is not None:
        recorded["intrinsics"] = [float(v) for v in settings["intrinsics_values"]]
    elif settings.get("intrinsics") == "--intrinsics" and "intrinsics" not in explicit and "fov" not in explicit:
        raise UsageError(f"--from {from_path}: its camera file is gone and its intrinsics came from a file",
                         "give --intrinsics FILE (the file the clip was made with) or --camera FILE")
    if "fov" in explicit or "intrinsics" in explicit:  # one of them replaces the recorded one
        recorded.pop("fov", None)
        recorded.pop("intrinsics", None)
    options = {**recorded, **explicit}
    if source and kind == "actions":
        return CameraSource(None, source, options)
    _refuse_action_options(explicit, True, f"a replay of {from_path.name}'s camera path")
    if source and not Path(source).expanduser().is_absolute() and (from_path.parent / source).is_file():
        source = str(from_path.parent / source)  # a relative source (older records): beside the clip, else from here
    if source and Path(source).is_file():
        if extra.get("camera_sha256") and file_sha256(Path(source)) != extra["camera_sha256"]:
            raise UsageError(f"--from {from_path}: {source} is not the camera path the clip recorded (its sha256 "
                             "differs)", "give --camera FILE or --actions to follow another path")
        return CameraSource(source, None, options)
    raise UsageError(f"--from {from_path}: its camera path is gone ({resolved.name} and {source or 'no source'})",
                     "give --camera FILE or --actions")


def _refuse_action_options(explicit: dict[str, Any], from_file: bool, what: str) -> None:
    """--speed and --turn-rate shape action paths only: given with a camera file they would do nothing."""
    given = [flag for flag, key in (("--speed", "speed"), ("--turn-rate", "turn_rate")) if key in explicit]
    if from_file and given:
        raise UsageError(f"{' and '.join(given)} appl{'y' if len(given) > 1 else 'ies'} to --actions, not to {what}",
                         "use --pose-scale to scale a camera file's translations")


def resolve_path(source: CameraSource, image_size: tuple[int, int], frames: int | None, default_frames: int):
    """The CameraPath to follow. Frames asked for must be on the path; without --frames, the model's default or
    the whole path if shorter (as diffusers takes `min(num_frames, len(c2w))`), with a notice when the path goes
    on past the default."""
    from sana.camera import resolve_camera

    def resolve(num_frames: int | None):
        return resolve_camera(source.camera, actions=source.actions, image_size=image_size, num_frames=num_frames,
                              **source.options)

    if frames is not None:
        return resolve(frames)
    whole = resolve(None)  # at most the longest clip's frames are built, however long the path
    if whole.num_frames <= default_frames:
        return whole
    length = whole.path_frames or whole.num_frames
    console.notice(f"the camera path gives {length} frames; the clip takes the first {default_frames} "
                   f"(give --frames N for up to {min(length, MAX_WORLD_FRAMES)})")
    return resolve(default_frames)
