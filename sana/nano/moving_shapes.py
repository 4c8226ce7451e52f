"""The moving-shapes grammar the nano video model is trained and scored on: clip specs, rendering, captions.

A clip is 17 frames of 128 x 128 at 8 fps: one or two filled shapes moving in a straight line over a plain
background. Colours (with their RGB values), shapes, sizes (half-extent 0.10 / 0.20 of the side) and backgrounds
are the image grammar's (`shapes.py`); so is the rasterisation (`shape_mask`: pixel centres, no anti-aliasing).
    one object:  "a {size} {color} {shape} moving {left|right|up|down} on a {bg} background"
        right: x 0.25 -> 0.75 at y 0.5; left: x 0.75 -> 0.25; down: y 0.25 -> 0.75 at x 0.5; up: y 0.75 -> 0.25
    two objects: "a {size} {color} {shape} moving {left|right} at the top and a {size} {color} {shape} moving
                  {left|right} at the bottom on a {bg} background"
        the first on y 0.27, the second on y 0.73, x as above; the two colours differ.
The start and the end point are each jittered by up to 0.03 of the side per axis, and the centre moves linearly
from one to the other: frame i of F sits at start + (end - start) * i / (F - 1). Two large objects at the widest
jitter meet at y = 0.5 without sharing a pixel.

Sampling is deterministic: clip `i` of seed `s` depends on (s, i) only (the image grammar's `scene_rng`, in
streams of its own), so a larger dataset of the same seed starts with the smaller one.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..errors import SanaError
from .shapes import BACKGROUNDS, COLORS, SHAPES, SIZES, scene_rng, shape_mask

SIDE = 128  # px
FRAMES = 17
FPS = 8
JITTER = 0.03  # largest offset of the start and of the end point per axis, as a fraction of the side
# direction -> (start, end) centres (x, y) as fractions of the side, y down, for a clip of one object
PATHS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "right": ((0.25, 0.5), (0.75, 0.5)), "left": ((0.75, 0.5), (0.25, 0.5)),
    "down": ((0.5, 0.25), (0.5, 0.75)), "up": ((0.5, 0.75), (0.5, 0.25)),
}
ROWS: dict[str, float] = {"top": 0.27, "bottom": 0.73}  # y of the two objects of a two-object clip
ROW_DIRECTIONS = ("left", "right")  # two objects move along their row
GRAMMAR = "sana-moving-shapes-1"


@dataclass(frozen=True)
class MovingObject:
    """One filled shape moving in `direction`; `row` is "top" / "bottom" in a two-object clip, else None.
    `start_jitter` / `end_jitter` are the (dx, dy) offsets of the path's ends."""

    size: str
    color: str
    shape: str
    direction: str
    row: str | None = None
    start_jitter: tuple[float, float] = (0.0, 0.0)
    end_jitter: tuple[float, float] = (0.0, 0.0)

    @property
    def half_extent(self) -> float:
        return SIZES[self.size]

    def _ends(self) -> tuple[tuple[float, float], tuple[float, float]]:
        (x0, y0), (x1, y1) = PATHS[self.direction]
        if self.row is not None:  # a two-object clip: the row's y, the direction's x
            y0 = y1 = ROWS[self.row]
        return ((x0 + self.start_jitter[0], y0 + self.start_jitter[1]),
                (x1 + self.end_jitter[0], y1 + self.end_jitter[1]))

    @property
    def start(self) -> tuple[float, float]:
        return self._ends()[0]

    @property
    def end(self) -> tuple[float, float]:
        return self._ends()[1]

    def center_at(self, t: float) -> tuple[float, float]:
        """The centre at clip time t in [0, 1] (frame i of F: t = i / (F - 1))."""
        (x0, y0), (x1, y1) = self._ends()
        return x0 + (x1 - x0) * t, y0 + (y1 - y0) * t

    def phrase(self) -> str:
        where = f" at the {self.row}" if self.row else ""
        return f"a {self.size} {self.color} {self.shape} moving {self.direction}{where}"


@dataclass(frozen=True)
class MotionScene:
    objects: tuple[MovingObject, ...]
    background: str

    def __post_init__(self) -> None:
        validate_motion_scene(self)

    @property
    def caption(self) -> str:
        return " and ".join(o.phrase() for o in self.objects) + f" on a {self.background} background"


def validate_motion_scene(scene: MotionScene) -> None:
    """Raise ValueError unless `scene` is a clip of the grammar."""
    if scene.background not in BACKGROUNDS:
        raise ValueError(f"unknown background {scene.background!r}")
    for obj in scene.objects:
        for value, allowed in ((obj.size, SIZES), (obj.color, COLORS), (obj.shape, SHAPES), (obj.direction, PATHS)):
            if value not in allowed:
                raise ValueError(f"unknown value {value!r} (one of {', '.join(allowed)})")
        if max(map(abs, (*obj.start_jitter, *obj.end_jitter))) > JITTER + 1e-9:
            raise ValueError(f"jitter {obj.start_jitter} / {obj.end_jitter} exceeds {JITTER}")
    if len(scene.objects) == 1:
        if scene.objects[0].row is not None:
            raise ValueError("a single object has no row")
    elif len(scene.objects) == 2:
        first, second = scene.objects
        if (first.row, second.row) != ("top", "bottom"):
            raise ValueError("of two objects the first moves at the top and the second at the bottom")
        if first.color == second.color:
            raise ValueError("the two objects must have different colours")
        if first.direction not in ROW_DIRECTIONS or second.direction not in ROW_DIRECTIONS:
            raise ValueError("two objects move left or right")
    else:
        raise ValueError("a clip has one or two objects")


# -- sampling ------------------------------------------------------------------------------------------------

def _jitter(rng: random.Random) -> tuple[float, float]:
    return rng.uniform(-JITTER, JITTER), rng.uniform(-JITTER, JITTER)


def sample_motion_scene(rng: random.Random, num_objects: int) -> MotionScene:
    """One clip of `num_objects` objects (1 or 2) drawn from `rng`."""
    if num_objects not in (1, 2):
        raise ValueError("a clip has one or two objects")
    objects: list[MovingObject] = []
    rows = (None,) if num_objects == 1 else ("top", "bottom")
    for row in rows:
        color = rng.choice([c for c in COLORS if c not in {o.color for o in objects}])
        direction = rng.choice(tuple(PATHS) if row is None else ROW_DIRECTIONS)
        objects.append(MovingObject(rng.choice(tuple(SIZES)), color, rng.choice(SHAPES), direction, row,
                                    _jitter(rng), _jitter(rng)))
    return MotionScene(tuple(objects), rng.choice(tuple(BACKGROUNDS)))


def sample_motion_scenes(num: int, seed: int, *, two_object_fraction: float = 0.5, num_objects: int | None = None,
                         stream: str = "video-train") -> list[MotionScene]:
    """`num` clips of `seed` in `stream`; `num_objects` fixes the count, else two with probability
    `two_object_fraction`. Evaluation uses other streams than the training data's."""
    scenes = []
    for index in range(num):
        rng = scene_rng(seed, index, stream)
        count = num_objects or (2 if rng.random() < two_object_fraction else 1)
        scenes.append(sample_motion_scene(rng, count))
    return scenes


# -- rendering -----------------------------------------------------------------------------------------------

def render_frame(scene: MotionScene, t: float, side: int = SIDE) -> np.ndarray:
    """The clip at time t in [0, 1] as uint8 RGB [side, side, 3]."""
    image = np.empty((side, side, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        image[shape_mask(obj.shape, obj.center_at(t), obj.half_extent, side)] = COLORS[obj.color]
    return image


def render_clip(scene: MotionScene, frames: int = FRAMES, side: int = SIDE) -> np.ndarray:
    """The clip as uint8 RGB [frames, side, side, 3]."""
    return np.stack([render_frame(scene, i / max(1, frames - 1), side) for i in range(frames)])


# -- captions ------------------------------------------------------------------------------------------------

_THING = rf"a ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) moving"
_ONE = rf"{_THING} ({'|'.join(PATHS)})"
_TWO = rf"{_THING} (\w+) at the top and {_THING} (\w+) at the bottom"
_CAPTION = re.compile(rf"(?:{_ONE}|{_TWO}) on a ({'|'.join(BACKGROUNDS)}) background")


def parse_motion_caption(text: str) -> MotionScene:
    """The clip a caption describes (paths without jitter). Case, repeated spaces and a final full stop are
    forgiven; anything else outside the grammar is a SanaError."""
    normalised = " ".join(text.lower().split()).rstrip(".")
    match = _CAPTION.fullmatch(normalised)
    if not match:
        raise SanaError(f"'{text}' is not a caption of the moving-shapes grammar",
                        "expected e.g. 'a large red circle moving right on a white background'")
    g = match.groups()
    if g[0] is not None:
        objects = [MovingObject(g[0], g[1], g[2], g[3])]
    else:
        objects = [MovingObject(g[4], g[5], g[6], g[7], "top"), MovingObject(g[8], g[9], g[10], g[11], "bottom")]
    try:
        return MotionScene(tuple(objects), g[12])
    except ValueError as exc:
        raise SanaError(f"'{text}' breaks the moving-shapes grammar: {exc}") from None


# -- datasets ------------------------------------------------------------------------------------------------

DATASET_INFO = "shapes.json"  # how a dataset folder was made (the image grammar's name for it)
CLIP_FORMATS = ("mp4", "gif", "png")  # png: a folder of frames a clip


def clear_video_dataset(out_dir: Path) -> int:
    """Delete what `sana shapes make` wrote in `out_dir` (and nothing else: see `shapes.made_dataset`). Returns the
    entries removed."""
    from .shapes import clear_dataset

    return clear_dataset(out_dir)


# From this many clips on, worker processes write them: encoding a clip's frames holds the GIL for most of its
# time, so threads wrote no faster than one (2-core CPU, 2026-12-04); 20,000 clips took minutes on one core.
PROCESS_FROM = 256


def _write_clip(job: tuple[Path, MotionScene, int, int, str, int]) -> str:
    """Write clip `index` and its caption file; returns its metadata.jsonl row (a worker process's task)."""
    from ..outputs import GenerationRecord, save_video

    out_dir, scene, index, width, fmt, seed = job
    stem = f"{index:0{width}d}"
    name = stem if fmt == "png" else f"{stem}.{fmt}"
    record = GenerationRecord(prompt=scene.caption, model=GRAMMAR, seed=seed, width=SIDE, height=SIDE,
                              extra={"index": index})
    save_video(render_clip(scene), out_dir / name, record, fps=FPS, fmt=fmt, force=True)
    (out_dir / f"{stem}.txt").write_text(scene.caption + "\n", encoding="utf-8")
    return json.dumps({"file_name": name, "text": scene.caption})


def _parallel(work: Callable, jobs: list) -> Iterator:
    """`map(work, jobs)` in order: in spawned worker processes (one a CPU, at most 16) for PROCESS_FROM jobs and
    more, else in this process."""
    workers = min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if len(jobs) < PROCESS_FROM or workers < 2:
        yield from map(work, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: the caller may hold threads (torch's among them) that a fork would copy mid-state
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(work, jobs, chunksize=max(1, min(64, len(jobs) // (4 * workers))))


def write_video_dataset(out_dir: Path, num: int, seed: int, *, two_object_fraction: float = 0.5, fmt: str = "mp4",
                        on_progress: Callable[[int, int], None] | None = None) -> list[MotionScene]:
    """Write `num` (clip, caption) pairs: `000000.mp4` (or `.gif`, or a `000000/` folder of PNG frames) with
    `000000.txt`, plus `metadata.jsonl` (file_name, text) and `shapes.json` (the settings, so the folder can be
    remade). Each clip carries a record naming its caption, seed and index. Returns the scenes written."""
    if fmt not in CLIP_FORMATS:
        raise SanaError(f"unknown clip format '{fmt}'", f"use {', '.join(CLIP_FORMATS)}")
    scenes = sample_motion_scenes(num, seed, two_object_fraction=two_object_fraction)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The record first: what an interrupted write left is still known as sana's (what --force may replace).
    info = {"grammar": GRAMMAR, "num": num, "seed": seed, "side": SIDE, "frames": FRAMES, "fps": FPS,
            "two_object_fraction": two_object_fraction, "format": fmt}
    (out_dir / DATASET_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    width = max(6, len(str(num - 1)))
    jobs = [(out_dir, scene, index, width, fmt, seed) for index, scene in enumerate(scenes)]
    rows = []
    for row in _parallel(_write_clip, jobs):
        rows.append(row)
        if on_progress:
            on_progress(len(rows), num)
    (out_dir / "metadata.jsonl").write_text("\n".join(rows) + ("\n" if rows else ""), encoding="utf-8")
    return scenes


def check_crop(frames: int | None, side: int | None) -> None:
    """Raise ValueError unless (frames, side) is a crop the Wan layout takes from the grammar's clips."""
    if frames is not None and not (1 <= frames <= FRAMES and (frames - 1) % 4 == 0):
        raise ValueError(f"crop of {frames} frames: give 1 + 4k frames, at most {FRAMES}")
    if side is not None and not (8 <= side <= SIDE and side % 8 == 0):
        raise ValueError(f"crop of {side} px: give a multiple of 8 up to {SIDE}")
