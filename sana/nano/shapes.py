"""The synthetic shapes grammar the nano model is trained and scored on: scene specs, rendering, captions.

A scene is one or two filled shapes on a plain background, 256 x 256:
    one object:  "a {size} {color} {shape} {pos} on a {bg} background"
    two objects: "a {size} {color} {shape} {pos} and a {size} {color} {shape} {pos} on a {bg} background"
Two objects have different colours and sit on opposite sides (left/right or top/bottom); at the largest size
and the widest jitter they are still 5 px apart, so objects never overlap.

Every shape of half-extent r spans the same 2r x 2r box around its centre: the circle's radius and the
square's half-side are r, and the triangle (apex up) has its apex at the top middle of the box and its base
along the bottom edge. Box fill ratios are therefore 1 (square), pi/4 (circle) and 1/2 (triangle).

Sampling is deterministic: scene `i` of seed `s` depends on (s, i) only, so a larger dataset of the same seed
starts with the smaller one.
"""

from __future__ import annotations

import json
import os
import random
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import SanaError

SIDE = 256  # the grammar's image side in pixels

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220),
    "yellow": (240, 210, 40), "purple": (150, 60, 190), "orange": (245, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 0.10, "large": 0.20}  # radius / half-side, as a fraction of the side
# position name -> (caption phrase, nominal centre (x, y) as fractions of the side, y down)
POSITIONS: dict[str, tuple[str, tuple[float, float]]] = {
    "left": ("on the left", (0.25, 0.5)), "right": ("on the right", (0.75, 0.5)),
    "top": ("at the top", (0.5, 0.25)), "bottom": ("at the bottom", (0.5, 0.75)),
    "center": ("in the center", (0.5, 0.5)),
}
OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
MAX_JITTER = 0.04  # largest centre offset per axis, as a fraction of the side

Pair = tuple[str, str]  # (color, shape)
ALL_PAIRS: tuple[Pair, ...] = tuple((c, s) for c in COLORS for s in SHAPES)
# Held out of training to measure composition: four colours, every shape at least once, and every colour and
# shape still seen in training with other partners.
DEFAULT_HOLDOUT: tuple[Pair, ...] = (("red", "triangle"), ("green", "circle"), ("blue", "square"), ("yellow", "circle"))


@dataclass(frozen=True)
class ShapeObject:
    """One filled shape; `jitter` is the centre's offset (dx, dy) from its position's nominal centre."""

    size: str
    color: str
    shape: str
    position: str
    jitter: tuple[float, float] = (0.0, 0.0)

    @property
    def pair(self) -> Pair:
        return self.color, self.shape

    @property
    def half_extent(self) -> float:
        """r as a fraction of the side."""
        return SIZES[self.size]

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) as fractions of the side, jitter included."""
        x, y = POSITIONS[self.position][1]
        return x + self.jitter[0], y + self.jitter[1]

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape} {POSITIONS[self.position][0]}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: str

    def __post_init__(self) -> None:
        validate_scene(self)

    @property
    def caption(self) -> str:
        return " and ".join(o.phrase() for o in self.objects) + f" on a {self.background} background"


def validate_scene(scene: Scene) -> None:
    """Raise ValueError unless `scene` is a scene of the grammar."""
    if scene.background not in BACKGROUNDS:
        raise ValueError(f"unknown background {scene.background!r}")
    for obj in scene.objects:
        for value, allowed in ((obj.size, SIZES), (obj.color, COLORS), (obj.shape, SHAPES), (obj.position, POSITIONS)):
            if value not in allowed:
                raise ValueError(f"unknown value {value!r} (one of {', '.join(allowed)})")
        if max(abs(obj.jitter[0]), abs(obj.jitter[1])) > MAX_JITTER + 1e-9:
            raise ValueError(f"jitter {obj.jitter} exceeds {MAX_JITTER}")
    if len(scene.objects) == 2:
        first, second = scene.objects
        if first.color == second.color:
            raise ValueError("the two objects must have different colours")
        if OPPOSITE.get(first.position) != second.position:
            raise ValueError("the two objects must be on opposite sides (left/right or top/bottom)")
    elif len(scene.objects) != 1:
        raise ValueError("a scene has one or two objects")


# -- sampling ------------------------------------------------------------------------------------------------

def scene_rng(seed: int, index: int, stream: str = "train") -> random.Random:
    """The generator for scene `index` of `seed` in `stream` (string seeding is stable across Python versions);
    evaluation sets use their own streams, so their scenes are not the training data's."""
    return random.Random(f"shapes:{stream}:{seed}:{index}")


def allowed_pairs(holdout: Iterable[Pair] = ()) -> tuple[Pair, ...]:
    """Every (color, shape) pair except the held-out ones."""
    held = {tuple(p) for p in holdout}
    unknown = held - set(ALL_PAIRS)
    if unknown:
        raise ValueError(f"unknown colour-shape pair(s): {sorted(unknown)}")
    return tuple(p for p in ALL_PAIRS if p not in held)


def sample_scene(rng: random.Random, num_objects: int, pairs: Sequence[Pair] = ALL_PAIRS,
                 required: Sequence[Pair] = ()) -> Scene:
    """One scene whose objects use `pairs`; with `required`, one object (at random) uses one of those instead."""
    if num_objects not in (1, 2):
        raise ValueError("a scene has one or two objects")
    focus = rng.randrange(num_objects) if required else -1
    positions = [rng.choice(tuple(POSITIONS))] if num_objects == 1 else list(rng.choice((("left", "right"), ("top", "bottom"))))
    if num_objects == 2 and rng.random() < 0.5:
        positions.reverse()
    objects: list[ShapeObject] = []
    for i, position in enumerate(positions):
        taken = {o.color for o in objects}
        choices = [p for p in (required if i == focus else pairs) if p[0] not in taken]
        if not choices:
            raise ValueError("no colour-shape pair left to choose from")
        color, shape = rng.choice(choices)
        jitter = (rng.uniform(-MAX_JITTER, MAX_JITTER), rng.uniform(-MAX_JITTER, MAX_JITTER))
        objects.append(ShapeObject(rng.choice(tuple(SIZES)), color, shape, position, jitter))
    return Scene(tuple(objects), rng.choice(tuple(BACKGROUNDS)))


def sample_scenes(num: int, seed: int, *, two_object_fraction: float = 0.5, holdout: Iterable[Pair] = DEFAULT_HOLDOUT,
                  num_objects: int | None = None, required: Sequence[Pair] = (), stream: str = "train") -> list[Scene]:
    """`num` scenes of `seed`. Objects never use a `holdout` pair, except that with `required` every scene has one
    object from `required` (the held-out evaluation set). `num_objects` fixes the count; otherwise two objects
    with probability `two_object_fraction`."""
    pairs = allowed_pairs(holdout)
    scenes = []
    for index in range(num):
        rng = scene_rng(seed, index, stream)
        count = num_objects or (2 if rng.random() < two_object_fraction else 1)
        scenes.append(sample_scene(rng, count, pairs, required))
    return scenes


# -- rendering -----------------------------------------------------------------------------------------------

def shape_mask(shape: str, center: tuple[float, float], half_extent: float, side: int = SIDE) -> np.ndarray:
    """Boolean [side, side] mask of one filled shape; pixel (i, j) is inside if its centre is (no anti-aliasing).
    `center` and `half_extent` are fractions of the side."""
    coords = (np.arange(side, dtype=np.float64) + 0.5) / side
    x, y = coords[None, :], coords[:, None]
    dx, dy, r = x - center[0], y - center[1], half_extent
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "triangle":  # apex (0, -r), base from (-r, r) to (r, r): half-width grows from 0 to r
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, side: int = SIDE) -> np.ndarray:
    """The scene as uint8 RGB [side, side, 3]."""
    image = np.empty((side, side, 3), dtype=np.uint8)
    image[:] = BACKGROUNDS[scene.background]
    for obj in scene.objects:
        image[shape_mask(obj.shape, obj.center, obj.half_extent, side)] = COLORS[obj.color]
    return image


def render_image(scene: Scene, side: int = SIDE):
    """The scene as a PIL RGB image."""
    from PIL import Image

    return Image.fromarray(render(scene, side))


# -- captions ------------------------------------------------------------------------------------------------

_PHRASE_TO_POSITION = {phrase: name for name, (phrase, _) in POSITIONS.items()}
_OBJECT = (rf"a ({'|'.join(SIZES)}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)}) "
           rf"({'|'.join(re.escape(p) for p in _PHRASE_TO_POSITION)})")
_CAPTION = re.compile(rf"{_OBJECT}(?: and {_OBJECT})? on a ({'|'.join(BACKGROUNDS)}) background")


def parse_caption(text: str) -> Scene:
    """The scene a caption describes (centres without jitter). Case, repeated spaces and a final full stop
    are forgiven; anything else outside the grammar is a SanaError."""
    normalised = " ".join(text.lower().split()).rstrip(".")
    match = _CAPTION.fullmatch(normalised)
    if not match:
        raise SanaError(f"'{text}' is not a caption of the shapes grammar",
                        "expected e.g. 'a small red circle on the left on a white background'")
    groups = match.groups()
    objects = [ShapeObject(size, color, shape, _PHRASE_TO_POSITION[pos])
               for size, color, shape, pos in (groups[0:4], groups[4:8]) if size is not None]
    try:
        return Scene(tuple(objects), groups[8])
    except ValueError as exc:
        raise SanaError(f"'{text}' breaks the shapes grammar: {exc}") from None


# -- datasets ------------------------------------------------------------------------------------------------

DATASET_INFO = "shapes.json"  # how a dataset folder was made; `sana finetune` skips .json sidecars
GRAMMAR = "sana-shapes-1"  # the record's name for an image dataset
_NUMBERED = re.compile(r"(\d{6,})(?:\.(png|txt|mp4|gif))?")


def _written_kind(name: str, info: dict) -> str | None:
    """What a dataset made as `info` (its shapes.json) wrote under `name`: "file", "frames" (a PNG-frames clip
    folder) or None (nothing: `name` is not sana's)."""
    if name in ("metadata.jsonl", DATASET_INFO):
        return "file"
    match = _NUMBERED.fullmatch(name)
    num = info.get("num")
    if match is None or not isinstance(num, int) or int(match[1]) >= num or len(match[1]) != max(6, len(str(num - 1))):
        return None
    from .moving_shapes import GRAMMAR as CLIPS

    suffix = match[2]
    if info.get("grammar") == GRAMMAR:
        return "file" if suffix in ("png", "txt") else None
    if info.get("grammar") == CLIPS:
        clip = info.get("format", "mp4")
        if suffix is None:
            return "frames" if clip == "png" else None
        return "file" if suffix == "txt" or (suffix == clip and clip != "png") else None
    return None


def made_dataset(out_dir: Path) -> tuple[list[Path], list[str]]:
    """(the entries of `out_dir` that `sana shapes make` wrote there, by the folder's shapes.json, and the names of
    the others): what --force may replace, and what it must not. A numbered file is sana's only when the record
    accounts for it, so a user's 000005.png is not. Hidden entries are in neither list: --force leaves them and
    training skips them. A PNG-frames clip holding a file sana did not write raises `SanaError` (the frames
    writer's rule, `check_replaceable_frames`)."""
    from ..outputs.video import check_replaceable_frames

    out_dir = Path(out_dir)
    try:
        info = json.loads((out_dir / DATASET_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    ours, others = [], []
    for entry in sorted(out_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        kind = _written_kind(entry.name, info) if isinstance(info, dict) else None
        if entry.is_symlink() or kind is None or (kind == "frames") != entry.is_dir():
            others.append(entry.name)
            continue
        if kind == "frames":
            check_replaceable_frames(entry)
        ours.append(entry)
    return ours, others


def clear_dataset(out_dir: Path) -> int:
    """Delete what `sana shapes make` wrote in `out_dir` (images or clips, as its shapes.json says) and nothing
    else, so a smaller dataset written over a larger one leaves no stale pairs behind. Returns the entries removed."""
    import shutil

    ours = made_dataset(out_dir)[0]
    for path in ours:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    return len(ours)


def write_dataset(out_dir: Path, num: int, seed: int, *, holdout: Iterable[Pair] = DEFAULT_HOLDOUT,
                  two_object_fraction: float = 0.5, side: int = SIDE,
                  on_progress: Callable[[int, int], None] | None = None) -> list[Scene]:
    """Write `num` (image, caption) pairs: `000000.png` + `000000.txt`, `metadata.jsonl` (file_name, text) and
    `shapes.json` (the settings, so the folder can be remade). Returns the scenes written."""
    holdout = [tuple(p) for p in holdout]
    scenes = sample_scenes(num, seed, two_object_fraction=two_object_fraction, holdout=holdout)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The record first: what an interrupted write left is still known as sana's (what --force may replace).
    info = {"grammar": GRAMMAR, "num": num, "seed": seed, "side": side,
            "two_object_fraction": two_object_fraction, "holdout": [list(p) for p in holdout]}
    (out_dir / DATASET_INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    width = max(6, len(str(num - 1)))

    def write(index: int) -> str:
        stem = f"{index:0{width}d}"
        render_image(scenes[index], side).save(out_dir / f"{stem}.png", optimize=False, compress_level=1)
        (out_dir / f"{stem}.txt").write_text(scenes[index].caption + "\n", encoding="utf-8")
        return json.dumps({"file_name": f"{stem}.png", "text": scenes[index].caption})

    # PNG encoding releases the GIL: threads make a large set in a fraction of the time, in the same order.
    rows = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for row in pool.map(write, range(len(scenes))):
            rows.append(row)
            if on_progress:
                on_progress(len(rows), num)
    (out_dir / "metadata.jsonl").write_text("\n".join(rows) + ("\n" if rows else ""), encoding="utf-8")
    return scenes
