"""Analytic prompt adherence for the moving-shapes grammar: does a clip show what its caption says?

Pixels are labelled and regions found by the image checker's `look` (`adherence.py`: nearest palette colour
within tolerance, 4-connected regions, the largest region of a colour is that colour's object). Three frames are
looked at: the first, the middle (frame F // 2) and the last.
  colour, shape, size  in the middle frame, by the image checker's rules (area, box-fill prototypes, half-extent
      from the area within a factor sqrt(2));
  motion  the object's centre (bounding-box centre, as the image checker) moves from the first frame to the last
      by at least `MIN_DISPLACEMENT` of the side in the stated direction;
  position  two objects only: the one "at the top" has its middle-frame centre in the top half, the one "at the
      bottom" in the bottom half (one object states no row: always right);
  background  the border's palette background in all three frames;
  extra objects  in any of the three frames, any other colour, or a second region of an expected colour, of at
      least `MIN_AREA` of the frame.
A clip is fully correct when every object is right in all five attributes, the background is right and nothing
else is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .adherence import (AREA_FACTOR, COLOR_TOLERANCE, MIN_AREA, Frame, ScoreReport, classify_shape, look,
                        nearest_size, score_plan, shape_features)
from .moving_shapes import MotionScene, MovingObject, parse_motion_caption, sample_motion_scenes

MIN_DISPLACEMENT = 0.3  # fraction of the side; the grammar's paths move 0.5 (at least 0.44 with jitter)
AXES = {"right": (0, 1.0), "left": (0, -1.0), "down": (1, 1.0), "up": (1, -1.0)}  # direction -> (axis, sign)
ATTRIBUTES = ("color", "shape", "size", "motion", "position")


@dataclass
class MotionCheck:
    """One expected object against what the clip shows (`found_*` are None when not measurable)."""

    expected: MovingObject
    color: bool = False
    shape: bool = False
    size: bool = False
    motion: bool = False
    position: bool = False
    area: float = 0.0  # middle frame, fraction of the frame
    found_shape: str | None = None
    found_size: str | None = None
    start: tuple[float, float] | None = None  # centre in the first frame, fractions of the side
    end: tuple[float, float] | None = None
    displacement: float | None = None  # along the stated direction, fraction of the side (negative: backwards)

    @property
    def correct(self) -> bool:
        return all(getattr(self, name) for name in ATTRIBUTES)


@dataclass
class MotionResult:
    scene: MotionScene
    objects: list[MotionCheck]
    background: bool
    found_background: str | None  # of the middle frame
    extra_objects: list[str] = field(default_factory=list)  # "colour@frame" of unasked-for regions

    @property
    def fully_correct(self) -> bool:
        return self.background and not self.extra_objects and all(o.correct for o in self.objects)

    def attributes(self) -> dict[str, bool]:
        """Per attribute, true when every object has it right."""
        return {name: all(getattr(o, name) for o in self.objects) for name in ATTRIBUTES} | {
            "background": self.background, "no_extras": not self.extra_objects}


def _center(region: np.ndarray, side: float) -> tuple[float, float]:
    rows, cols = np.nonzero(region)
    return ((cols.min() + cols.max() + 1) / 2 / side, (rows.min() + rows.max() + 1) / 2 / side)


def _largest(frame: Frame, color: str) -> np.ndarray | None:
    regions = frame.regions[color]
    return regions[0] if regions and regions[0].sum() >= MIN_AREA * frame.pixels else None


def _check_object(expected: MovingObject, first: Frame, middle: Frame, last: Frame) -> MotionCheck:
    check = MotionCheck(expected)
    region = _largest(middle, expected.color)
    if region is not None:
        check.color, check.area = True, float(region.sum()) / middle.pixels
        features, (_, _, h, w) = shape_features(region)
        check.found_shape = classify_shape(features, w / h)
        # The size follows from the area and the shape seen (the expected one when none is recognised).
        half_extent = math.sqrt(region.sum() / AREA_FACTOR[check.found_shape or expected.shape]) / middle.side
        check.found_size = nearest_size(half_extent)
        check.shape = check.found_shape == expected.shape
        check.size = check.found_size == expected.size
        y = _center(region, middle.side)[1]
        check.position = expected.row is None or (y < 0.5) == (expected.row == "top")
    start, end = _largest(first, expected.color), _largest(last, expected.color)
    if start is not None and end is not None:
        check.start, check.end = _center(start, first.side), _center(end, last.side)
        axis, sign = AXES[expected.direction]
        check.displacement = sign * (check.end[axis] - check.start[axis])
        check.motion = check.displacement >= MIN_DISPLACEMENT
    return check


def check_clip(frames, caption: str | MotionScene, *, tolerance: float = COLOR_TOLERANCE) -> MotionResult:
    """Score one clip (uint8 [F, H, W, 3], or a list of RGB frames, F >= 2) against a caption of the grammar or a
    MotionScene."""
    scene = caption if isinstance(caption, MotionScene) else parse_motion_caption(caption)
    if len(frames) < 2:
        raise ValueError(f"a clip needs at least two frames to show motion, got {len(frames)}")
    looked = [look(frames[i], tolerance) for i in (0, len(frames) // 2, len(frames) - 1)]
    checks = [_check_object(obj, *looked) for obj in scene.objects]
    expected = {o.color for o in scene.objects}
    extras = []
    for name, frame in zip(("first", "middle", "last"), looked):
        for color, regions in frame.regions.items():
            others = regions[1:] if color in expected else regions
            extras += [f"{color}@{name}" for region in others if region.sum() >= MIN_AREA * frame.pixels]
    background = all(frame.background == scene.background for frame in looked)
    return MotionResult(scene=scene, objects=checks, background=background, found_background=looked[1].background,
                        extra_objects=extras)


# -- scoring a model -----------------------------------------------------------------------------------------

GenerateClips = Callable[[list[str], list[int]], list]  # (prompts, seeds) -> one uint8 [F, H, W, 3] clip each
VIDEO_SETS = ("one-object", "two-object")


@dataclass
class ScoredClip:
    set: str
    prompt: str
    seed: int
    result: MotionResult

    def row(self) -> dict:
        return {"set": self.set, "prompt": self.prompt, "seed": self.seed,
                "fully_correct": self.result.fully_correct, **self.result.attributes(),
                "found_background": self.result.found_background, "extra_objects": self.result.extra_objects,
                "objects": [{"found_shape": o.found_shape, "found_size": o.found_size, "area": round(o.area, 4),
                             "displacement": None if o.displacement is None else round(o.displacement, 3)}
                            for o in self.result.objects]}


def video_evaluation_prompts(num: int, seed: int) -> list[tuple[str, MotionScene, int]]:
    """(set, scene, generation seed) for `num` fresh clips, half one-object and half two-object, each set from a
    stream of its own apart from the training data's."""
    plan = [("one-object", sample_motion_scenes(num - num // 2, seed, num_objects=1, stream="video-eval-1")),
            ("two-object", sample_motion_scenes(num // 2, seed, num_objects=2, stream="video-eval-2"))]
    out = []
    for name, scenes in plan:
        out += [(name, scene, seed + len(out) + i) for i, scene in enumerate(scenes)]
    return out


def score_video_model(generate: GenerateClips, num: int, seed: int, *, batch_size: int = 1,
                      on_result: Callable[[ScoredClip, object], None] | None = None) -> ScoreReport:
    """Generate a clip for each evaluation prompt (one seed each, `batch_size` prompts a call) and check it;
    `on_result(scored, clip)` sees each as it is scored. The report's sets are `VIDEO_SETS`."""
    return score_plan(video_evaluation_prompts(num, seed), generate, batch_size, check_clip, ScoredClip, on_result,
                      noun="clip")


def clip_grid(clips: list[np.ndarray], correct: list[bool], *, columns: int = 4, frame: int = 3) -> np.ndarray:
    """Clips [F, H, W, 3] of one size tiled into one clip, each framed green (fully correct) or red; uint8
    [F, rows * (H + 2 frame), columns * (W + 2 frame), 3]. Shorter clips hold their last frame."""
    count, length = len(clips), max(len(c) for c in clips)
    height, width = clips[0].shape[1:3]
    rows, columns = max(1, math.ceil(count / columns)), min(columns, max(1, count))
    th, tw = height + 2 * frame, width + 2 * frame
    grid = np.full((length, rows * th, columns * tw, 3), 255, np.uint8)
    for i, (clip, ok) in enumerate(zip(clips, correct)):
        top, left = (i // columns) * th, (i % columns) * tw
        grid[:, top:top + th, left:left + tw] = (40, 170, 60) if ok else (210, 40, 40)
        held = np.concatenate([clip, np.repeat(clip[-1:], length - len(clip), axis=0)]) if len(clip) < length else clip
        grid[:, top + frame:top + frame + height, left + frame:left + frame + width] = held
    return grid
