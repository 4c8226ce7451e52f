"""The keyboard action language (`--actions "w-80,jw-40"`), as diffusers 0.42.1's SANA-WM pipeline reads it.

A string is segments `<keys>-<frames>` joined by commas. Keys are any of `wasdijkl` held together for that many
frames (order and repeats do not matter, case is ignored), or `none` to hold still. Each frame applies one step:

* pitch first: `i` / `k` add / subtract `turn_rate` degrees about the camera's own x axis (right-multiplied); a
  step that would take the accumulated pitch outside +-85 degrees is dropped (so the camera stops at 84 degrees
  with the default rate);
* then yaw: `l` / `j` add / subtract `turn_rate` degrees about the world y axis (left-multiplied);
  R_new = Ry(yaw) @ R @ Rx(pitch);
* then translation on the horizontal plane: the new forward (z) and right (x) axes with their y component zeroed
  and re-normalised, `w` / `s` moving +- forward and `d` / `a` +- right by `speed` units each (diagonals add).

Axes are OpenCV's (+x right, +y down, +z forward), so `l` turns right and `i` looks up. The path starts at the
identity and has one pose per action frame after it: "w-80,jw-40,w-40" gives 161 poses.

Note: the newer NVlabs scripts remap these keys (a/d yaw, j/l strafe) and smooth the velocity; this module
follows diffusers, which the released pipeline uses.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from ..errors import UsageError
from .path import MAX_WORLD_FRAMES

DEFAULT_SPEED = 0.05  # world units a frame (about 0.8 m/s at 16 fps for a metric model)
DEFAULT_TURN_RATE = 1.2  # degrees a frame
PITCH_LIMIT_DEGREES = 85.0
ACTION_KEYS = "wasdijkl"
# Steps an action string may hold: the first frame and one a step make the longest clip SANA-WM makes.
MAX_ACTION_STEPS = MAX_WORLD_FRAMES - 1

# For `--help`: what each key does with the default speeds.
ACTION_HELP = f"""\
Actions: comma-separated KEYS-FRAMES segments; the keys are held together for FRAMES frames.
  w / s   move forward / back      ({DEFAULT_SPEED:g} units a frame, on the horizontal plane)
  a / d   move left / right        ({DEFAULT_SPEED:g} units a frame)
  j / l   turn left / right        ({DEFAULT_TURN_RATE:g} degrees a frame, about the world's vertical axis)
  i / k   look up / down           ({DEFAULT_TURN_RATE:g} degrees a frame, stops at +-{PITCH_LIMIT_DEGREES:g} degrees)
  none    hold still
Keys combine: "wd-20" moves diagonally, "jw-40" turns left while moving forward. "w-80,jw-40,w-40" is
80 frames forward, 40 turning left while moving, 40 forward: 160 steps after the first frame, 161 frames."""


def _count(text: str) -> int | None:
    """A segment's frame count, or None unless it is a positive integer written in digits."""
    if not (text.isascii() and text.isdigit()):  # "٣" or "３" are digits to Python, not to someone reading it
        return None
    try:
        count = int(text)
    except ValueError:  # digits int() does not read, such as superscripts
        return None
    return count if count > 0 else None


def parse_actions(actions: str) -> list[frozenset[str]]:
    """The keys held in each frame after the first, one set per step.

    Whitespace is ignored and a full-width comma counts as a comma (as in diffusers). Raises a UsageError naming
    the segment for an empty string, a segment without `-`, a count that is not a positive integer, or an unknown
    key.
    """
    cleaned = "".join(actions.replace("，", ",").split())
    if not cleaned:
        raise UsageError("--actions is empty; expected segments such as \"w-80,jw-40\"", "keys: wasdijkl or none")
    steps: list[frozenset[str]] = []
    for number, segment in enumerate(cleaned.split(","), start=1):
        where = f"--actions segment {number} {segment!r}"
        if "-" not in segment:
            raise UsageError(f"{where}: expected KEYS-FRAMES, e.g. \"w-80\"")
        keys_text, count_text = segment.rsplit("-", 1)
        count = _count(count_text)
        if count is None:
            raise UsageError(f"{where}: frame count {count_text!r}; expected a positive whole number")
        keys_text = keys_text.lower()
        # "none" and an empty key list both hold still (diffusers treats "-5" like "none-5")
        unknown = [] if keys_text == "none" else sorted({key for key in keys_text if key not in ACTION_KEYS})
        if unknown:
            raise UsageError(f"{where}: unknown key {', '.join(map(repr, unknown))}; "
                             f"expected letters of {ACTION_KEYS} or \"none\"")
        keys = frozenset() if keys_text == "none" else frozenset(keys_text)
        if len(steps) + count > MAX_ACTION_STEPS:  # refused before a huge count is integrated
            raise UsageError(f"--actions make {len(steps) + count + 1} frames by segment {number} {segment!r}",
                             f"SANA-WM makes at most {MAX_WORLD_FRAMES} frames, a minute at 16 fps")
        steps.extend([keys] * count)
    return steps


def _rot_x(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]], dtype=np.float64)


def _rot_y(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=np.float64)


def _horizontal(axis: np.ndarray) -> np.ndarray:
    """The axis with its vertical (y) component removed, re-normalised (left as zero when it was vertical)."""
    flat = axis.copy()
    flat[1] = 0.0
    norm = float(np.linalg.norm(flat))
    return flat / norm if norm > 0 else flat


def actions_to_c2w(actions: str, *, speed: float = DEFAULT_SPEED, turn_rate: float = DEFAULT_TURN_RATE,
                   pitch_limit: float = PITCH_LIMIT_DEGREES) -> np.ndarray:
    """Camera-to-world poses [steps + 1, 4, 4] float64, OpenCV axes, the first the identity.

    The integration is diffusers' step for step in float64 (diffusers then rounds to float32).
    """
    steps = parse_actions(actions)
    turn = math.radians(turn_rate)
    limit = math.radians(pitch_limit)
    rotation, position = np.eye(3), np.zeros(3)
    pitch = 0.0
    poses = np.zeros((len(steps) + 1, 4, 4))
    poses[:, 3, 3] = 1.0
    poses[0, :3, :3] = rotation
    for frame, keys in enumerate(steps, start=1):
        pitch_step = (turn if "i" in keys else 0.0) - (turn if "k" in keys else 0.0)
        if -limit <= pitch + pitch_step <= limit:
            pitch += pitch_step
        else:
            pitch_step = 0.0
        yaw_step = (turn if "l" in keys else 0.0) - (turn if "j" in keys else 0.0)
        rotation = _rot_y(yaw_step) @ rotation @ _rot_x(pitch_step)
        forward, right = _horizontal(rotation[:, 2]), _horizontal(rotation[:, 0])
        move = np.zeros(3)
        if "w" in keys:
            move += forward * speed
        if "s" in keys:
            move -= forward * speed
        if "d" in keys:
            move += right * speed
        if "a" in keys:
            move -= right * speed
        position = position + move
        poses[frame, :3, :3] = rotation
        poses[frame, :3, 3] = position
    return poses


def actions_sha256(actions: str) -> str:
    """The source hash an action path records: sha256 of the string as given, UTF-8."""
    return hashlib.sha256(actions.encode("utf-8")).hexdigest()
