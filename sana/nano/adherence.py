"""Analytic prompt adherence for the shapes grammar: does an image show what its caption says?

Every pixel is labelled with the nearest palette colour (the six object colours and three backgrounds) when
it lies within `COLOR_TOLERANCE` of it, else left unlabelled (blurred edges, off-palette noise). Then:
- background: the palette background nearest the median of a thin border ring;
- per object, on the largest 4-connected region of its colour:
  colour  the region covers at least `MIN_AREA` of the image;
  position  the centre of its bounding box lies within `POSITION_TOLERANCE` of the expected anchor, and
      nearer to it than to any other anchor;
  shape  nearest prototype in (box fill, top-corner fill, bottom-corner fill, 2 x vertical centroid): the
      box fill ratio separates square (1), circle (pi/4) and triangle (1/2), the corners separate a square
      from a rounded blob, the vertical centroid (2/3 down for a triangle) checks the apex is up;
  size  the half-extent implied by the area and the shape (area = k r^2) is within a factor sqrt(2) of the
      expected one: small and large are a factor 2 apart;
- extra objects: any other colour, or a second region of an expected colour, of at least `MIN_AREA`.
An image is fully correct when the background is right, every object is right in all four attributes, and
nothing else is drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Sequence

import numpy as np

from .shapes import (BACKGROUNDS, COLORS, DEFAULT_HOLDOUT, POSITIONS, SIZES, Pair, Scene, ShapeObject,
                     parse_caption, sample_scenes, shape_mask)

COLOR_TOLERANCE = 60.0  # RGB distance; the closest two palette colours (yellow, orange) are 71 apart
MIN_AREA = 0.004  # fraction of the image; the smallest object (a small triangle) covers 0.02
POSITION_TOLERANCE = 0.125  # fraction of the side; half the anchor spacing, twice the largest jitter offset
SHAPE_TOLERANCE = 0.45  # feature distance; the nearest two prototypes (circle, triangle) are 0.72 apart
SIZE_TOLERANCE = math.sqrt(2)  # ratio either side of the expected half-extent

PALETTE_NAMES = tuple(COLORS) + tuple(BACKGROUNDS)
PALETTE = np.array([*COLORS.values(), *BACKGROUNDS.values()], dtype=np.float32)  # [9, 3]
AREA_FACTOR = {"circle": math.pi, "square": 4.0, "triangle": 2.0}  # area = k r^2


@dataclass
class ObjectCheck:
    """One expected object against what the image shows (`found_*` are None when not measurable)."""

    expected: ShapeObject
    color: bool = False
    position: bool = False
    shape: bool = False
    size: bool = False
    area: float = 0.0  # of the largest region, fraction of the image
    found_center: tuple[float, float] | None = None
    found_position: str | None = None
    found_shape: str | None = None
    found_size: str | None = None
    half_extent: float | None = None  # fraction of the side

    @property
    def correct(self) -> bool:
        return self.color and self.position and self.shape and self.size


@dataclass
class AdherenceResult:
    scene: Scene
    objects: list[ObjectCheck]
    background: bool
    found_background: str | None
    extra_objects: list[str] = field(default_factory=list)  # colour names of unasked-for regions

    @property
    def fully_correct(self) -> bool:
        return self.background and not self.extra_objects and all(o.correct for o in self.objects)

    def attributes(self) -> dict[str, bool]:
        """Per attribute, true when every object has it right."""
        return {name: all(getattr(o, name) for o in self.objects) for name in ("color", "shape", "position", "size")} | {
            "background": self.background, "no_extras": not self.extra_objects}


# -- pixels --------------------------------------------------------------------------------------------------

def to_array(image) -> np.ndarray:
    """PIL image or array [H, W, 3] (uint8, or float in 0..1) -> float32 RGB in 0..255."""
    if hasattr(image, "convert"):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {array.shape}")
    if array.dtype != np.uint8 and array.max(initial=0) <= 1.0:
        array = array * 255.0
    return array.astype(np.float32)


def palette_labels(pixels: np.ndarray, tolerance: float = COLOR_TOLERANCE) -> np.ndarray:
    """[H, W] index into PALETTE_NAMES of each pixel's nearest palette colour, -1 if none is within tolerance."""
    distance = np.linalg.norm(pixels[:, :, None, :] - PALETTE[None, None], axis=-1)  # [H, W, 9]
    labels = distance.argmin(axis=-1)
    labels[distance.min(axis=-1) > tolerance] = -1
    return labels


def palette_labels_uint8(pixels: np.ndarray, tolerance: float = COLOR_TOLERANCE) -> np.ndarray:
    """`palette_labels` of a uint8 image [H, W, 3]: the same labels [H, W] (-1: none within tolerance), as int8,
    several times faster.

    Squared distances of integers are exact integers, and the float32 norms the reference compares are their
    correctly rounded square roots: distinct below 3 x 255^2, so the nearest colour, ties (first wins) and the
    tolerance test (d^2 > tolerance^2 for an integer tolerance) come out the same."""
    channels = [pixels[:, :, c].astype(np.int32) for c in range(3)]
    palette = PALETTE.astype(np.int32)
    best, labels = None, np.zeros(pixels.shape[:2], dtype=np.int8)
    for index, (r, g, b) in enumerate(palette):
        d2 = (channels[0] - r) ** 2
        d2 += (channels[1] - g) ** 2
        d2 += (channels[2] - b) ** 2
        if best is None:
            best = d2
        else:
            labels[d2 < best] = index
            np.minimum(best, d2, out=best)
    labels[np.sqrt(best.astype(np.float32)) > np.float32(tolerance)] = -1
    return labels


def components(mask: np.ndarray, min_pixels: float = 0) -> list[np.ndarray]:
    """4-connected regions of a boolean mask as boolean masks, largest first (ties in order of their first run):
    the largest always, the others when they have at least `min_pixels` (noise speckles are never materialised).
    Union-find over row runs.

    Runs are (row, start, end) in row-major order; run i touches run j of the row above when their column ranges
    overlap, and those j are one contiguous range, found by binary search over every run's (row, column) keys."""
    width = mask.shape[1] + 2
    edges = np.diff(mask.astype(np.int8), axis=1, prepend=0, append=0)  # [H, W + 1]: +1 run starts, -1 run ends
    rows, starts = np.nonzero(edges == 1)
    ends = np.nonzero(edges == -1)[1]
    if not len(rows):
        return []
    above_start = (rows - 1) * width
    lo = np.searchsorted(rows * width + ends, above_start + starts, side="right")  # first j ending after i starts
    hi = np.searchsorted(rows * width + starts, above_start + ends, side="left")  # first j starting at i's end
    count = np.maximum(hi - lo, 0)
    first = np.cumsum(count) - count
    above = np.arange(int(count.sum())) - np.repeat(first - lo, count)
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(np.repeat(np.arange(len(rows)), count).tolist(), above.tolist()):
        a, b = root(i), root(j)
        if a != b:
            parent[a] = b
    _, first_run, group = np.unique([root(i) for i in range(len(rows))], return_index=True, return_inverse=True)
    areas = np.bincount(group, weights=ends - starts)
    by_first = np.argsort(first_run, kind="stable")  # the reference's group order, then largest first (stable)
    regions = []
    for rank, g in enumerate(by_first[np.argsort(-areas[by_first], kind="stable")]):
        if rank > 0 and areas[g] < min_pixels:
            break
        region = np.zeros(mask.shape, dtype=bool)
        for i in np.flatnonzero(group == g).tolist():
            region[rows[i], starts[i] : ends[i]] = True
        regions.append(region)
    return regions


# -- shape features ------------------------------------------------------------------------------------------

def shape_features(region: np.ndarray) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """(features [4], bounding box (top, left, height, width) in pixels) of a non-empty region.

    Features: box fill ratio, mean fill of the two top corner boxes, of the two bottom ones (each a quarter of
    the box on a side), and twice the centroid's relative height in the box (weighted so an upside-down
    triangle is far from every prototype)."""
    rows, cols = np.nonzero(region)
    top, left = rows.min(), cols.min()
    box = region[top : rows.max() + 1, left : cols.max() + 1]
    h, w = box.shape
    ch, cw = max(1, round(h / 4)), max(1, round(w / 4))
    top_corners = (box[:ch, :cw].mean() + box[:ch, -cw:].mean()) / 2
    bottom_corners = (box[-ch:, :cw].mean() + box[-ch:, -cw:].mean()) / 2
    centroid = (rows.mean() - top + 0.5) / h
    features = np.array([box.mean(), top_corners, bottom_corners, 2 * centroid])
    return features, (float(top), float(left), float(h), float(w))


@lru_cache(maxsize=None)
def shape_prototypes() -> dict[str, np.ndarray]:
    """Features of each shape as the grammar renders it, large and centred."""
    return {shape: shape_features(shape_mask(shape, (0.5, 0.5), 0.4))[0] for shape in AREA_FACTOR}


def classify_shape(features: np.ndarray, aspect: float) -> str | None:
    """The nearest shape prototype, or None for a region far from all of them or not about as wide as tall."""
    if not 0.75 <= aspect <= 1 / 0.75:
        return None
    distances = {shape: float(np.linalg.norm(features - proto)) for shape, proto in shape_prototypes().items()}
    best = min(distances, key=distances.get)
    return best if distances[best] <= SHAPE_TOLERANCE else None


def nearest_position(center: tuple[float, float]) -> str | None:
    """The position anchor nearest `center` (fractions of the side), or None if none is within tolerance."""
    distances = {name: math.dist(center, anchor) for name, (_, anchor) in POSITIONS.items()}
    best = min(distances, key=distances.get)
    return best if distances[best] <= POSITION_TOLERANCE else None


def nearest_size(half_extent: float) -> str | None:
    """small / large by log distance, or None when the nearest is more than SIZE_TOLERANCE away."""
    ratios = {name: abs(math.log(half_extent / r)) for name, r in SIZES.items()}
    best = min(ratios, key=ratios.get)
    return best if ratios[best] <= math.log(SIZE_TOLERANCE) else None


# -- the check -----------------------------------------------------------------------------------------------

@dataclass
class Frame:
    """One labelled image: each object colour's 4-connected regions of at least `MIN_AREA` (largest first, in
    `COLORS` order), the palette background seen at its border (None when none is within tolerance), the side
    (sqrt of the area, in pixels: positions and sizes are fractions of it), the pixel count and `MIN_AREA` of it."""

    regions: dict[str, list[np.ndarray]]
    background: str | None
    side: float
    pixels: int
    min_pixels: float


def look(image, tolerance: float = COLOR_TOLERANCE) -> Frame:
    """Label an RGB image (PIL or array) and find its objects and background. uint8 images (PIL ones included)
    are labelled in integers (`palette_labels_uint8`), others through `to_array`: the same labels."""
    if hasattr(image, "convert"):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        labels = palette_labels_uint8(image, tolerance)
        pixels = image
    else:
        pixels = to_array(image)
        labels = palette_labels(pixels, tolerance)
    height, width = pixels.shape[:2]
    ring = max(2, round(min(height, width) / 64))
    border = np.concatenate([pixels[:ring].reshape(-1, 3), pixels[-ring:].reshape(-1, 3),
                             pixels[:, :ring].reshape(-1, 3), pixels[:, -ring:].reshape(-1, 3)]).astype(np.float32)
    median = np.median(border, axis=0)
    distance = {name: float(np.linalg.norm(median - np.array(rgb))) for name, rgb in BACKGROUNDS.items()}
    background = min(distance, key=distance.get)
    min_pixels = MIN_AREA * height * width
    regions = {}
    for index, name in enumerate(COLORS):
        mask = labels == index
        regions[name] = components(mask, min_pixels) if mask.any() else []
    return Frame(regions, background if distance[background] <= tolerance else None, math.sqrt(height * width),
                 height * width, min_pixels)


def _check_object(expected: ShapeObject, region: np.ndarray | None, image_area: int, side: float) -> ObjectCheck:
    check = ObjectCheck(expected)
    if region is None:
        return check
    area = int(region.sum())
    check.area = area / image_area
    check.color = check.area >= MIN_AREA
    if not check.color:
        return check
    features, (top, left, h, w) = shape_features(region)
    check.found_center = ((left + w / 2) / side, (top + h / 2) / side)
    check.found_position = nearest_position(check.found_center)
    check.found_shape = classify_shape(features, w / h)
    # The size follows from the area and the shape seen (the expected one when none is recognised).
    check.half_extent = math.sqrt(area / AREA_FACTOR[check.found_shape or expected.shape]) / side
    check.found_size = nearest_size(check.half_extent)
    check.position = check.found_position == expected.position
    check.shape = check.found_shape == expected.shape
    check.size = check.found_size == expected.size
    return check


def check_image(image, caption: str | Scene, *, tolerance: float = COLOR_TOLERANCE) -> AdherenceResult:
    """Score one RGB image (PIL or array, any square-ish size) against a caption of the grammar or a Scene."""
    scene = caption if isinstance(caption, Scene) else parse_caption(caption)
    frame = look(image, tolerance)
    checks, extras = [], []
    expected_colors = {o.color for o in scene.objects}
    for name, regions in frame.regions.items():
        if name in expected_colors:  # its largest region is the object; colours are unique within a scene
            obj = next(o for o in scene.objects if o.color == name)
            checks.append(_check_object(obj, regions[0] if regions else None, frame.pixels, frame.side))
            regions = regions[1:]
        extras += [name for region in regions if region.sum() >= frame.min_pixels]
    checks.sort(key=lambda c: scene.objects.index(c.expected))
    return AdherenceResult(scene=scene, objects=checks, background=frame.background == scene.background,
                           found_background=frame.background, extra_objects=extras)


# -- scoring a model -----------------------------------------------------------------------------------------

Generate = Callable[[list[str], list[int]], list]  # (prompts, seeds) -> one RGB image each
SETS = ("one-object", "two-object", "held-out")


@dataclass
class ScoredPrompt:
    set: str
    prompt: str
    seed: int
    result: AdherenceResult

    def row(self) -> dict:
        return {"set": self.set, "prompt": self.prompt, "seed": self.seed,
                "fully_correct": self.result.fully_correct, **self.result.attributes(),
                "found_background": self.result.found_background, "extra_objects": self.result.extra_objects,
                "objects": [{"found_shape": o.found_shape, "found_position": o.found_position,
                             "found_size": o.found_size, "area": round(o.area, 4)} for o in self.result.objects]}


@dataclass
class ScoreReport:
    prompts: list[ScoredPrompt]

    def rows_of(self, name: str) -> list[ScoredPrompt]:
        return [p for p in self.prompts if p.set == name]

    def percent(self, name: str, attribute: str = "fully_correct") -> float | None:
        """Share of the set's prompts (in %) that got `attribute` right; None for an empty set."""
        rows = self.rows_of(name)
        if not rows:
            return None
        hits = [p.result.fully_correct if attribute == "fully_correct" else p.result.attributes()[attribute] for p in rows]
        return 100.0 * sum(hits) / len(hits)

    def summary(self) -> dict[str, float | None]:
        """Fully correct, in %, per set."""
        return {name: self.percent(name) for name in SETS}


def evaluation_prompts(num: int, seed: int, *, num_heldout: int | None = None,
                       holdout: Sequence[Pair] = DEFAULT_HOLDOUT) -> list[tuple[str, Scene, int]]:
    """(set, scene, generation seed) for `num` prompts of seen pairs (half one-object, half two-object) and
    `num_heldout` (default num // 2) prompts that each use a held-out pair, half of them with two objects.
    Each set draws from its own stream of `seed`, apart from the training data's stream."""
    num_heldout = num // 2 if num_heldout is None else num_heldout
    holdout = [tuple(p) for p in holdout]
    plan = [("one-object", sample_scenes(num - num // 2, seed, num_objects=1, holdout=holdout, stream="eval-1")),
            ("two-object", sample_scenes(num // 2, seed, num_objects=2, holdout=holdout, stream="eval-2"))]
    if holdout and num_heldout:
        plan.append(("held-out", sample_scenes(num_heldout, seed, holdout=holdout, required=holdout,
                                               stream="eval-heldout")))
    out, index = [], 0
    for name, scenes in plan:
        for scene in scenes:
            out.append((name, scene, seed + index))
            index += 1
    return out


def score_model(generate: Generate, num: int, seed: int, *, num_heldout: int | None = None,
                holdout: Sequence[Pair] = DEFAULT_HOLDOUT, batch_size: int = 8,
                on_result: Callable[[ScoredPrompt, object], None] | None = None) -> ScoreReport:
    """Generate an image for each evaluation prompt (one seed each, `batch_size` prompts a call) and check it.
    `on_result(scored, image)` sees each one as it is scored (progress, sample grids)."""
    plan = evaluation_prompts(num, seed, num_heldout=num_heldout, holdout=holdout)
    return score_plan(plan, generate, batch_size, check_image, ScoredPrompt, on_result, noun="image")


def score_plan(plan: list[tuple], generate: Callable, batch_size: int, check: Callable, entry_type: type,
               on_result: Callable | None, *, noun: str) -> ScoreReport:
    """Generate for each (set, scene, seed) of `plan`, `batch_size` a call, and score each output with
    `check(output, scene)` into an `entry_type(set, prompt, seed, result)`; `noun` names an output in errors."""
    scored = []
    for start in range(0, len(plan), batch_size):
        chunk = plan[start : start + batch_size]
        outputs = generate([scene.caption for _, scene, _ in chunk], [s for _, _, s in chunk])
        if len(outputs) != len(chunk):
            raise ValueError(f"generate returned {len(outputs)} {noun}(s) for {len(chunk)} prompt(s)")
        for (name, scene, gen_seed), output in zip(chunk, outputs):
            entry = entry_type(name, scene.caption, gen_seed, check(output, scene))
            scored.append(entry)
            if on_result:
                on_result(entry, output)
    return ScoreReport(scored)


def sample_grid(images: Sequence, correct: Iterable[bool], *, columns: int = 8, tile: int = 128, frame: int = 4):
    """A PIL grid of `images`, each framed green (fully correct) or red."""
    from PIL import Image, ImageOps

    images = list(images)
    rows = max(1, math.ceil(len(images) / columns))
    step = tile + 2 * frame
    grid = Image.new("RGB", (min(columns, max(1, len(images))) * step, rows * step), (255, 255, 255))
    for i, (image, ok) in enumerate(zip(images, correct)):
        thumb = image.convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR)
        framed = ImageOps.expand(thumb, border=frame, fill=(40, 170, 60) if ok else (210, 40, 40))
        grid.paste(framed, ((i % columns) * step, (i // columns) * step))
    return grid
