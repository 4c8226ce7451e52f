"""The `shapes` reward: the nano grammar's analytic checker with partial credit, over a process pool.

Score of one image = (attributes right over all objects (colour, shape, position, size: four each) + the
background + "nothing else drawn") / (4 x objects + 2): 1 exactly when the image is fully correct, and every
attribute fixed moves it. A round checks over a thousand images, so uint8 images take a faster route to the same
verdicts as `adherence.check_image` (`look_uint8`: palette distances in integers, the runs of every row found at
once; ~8x faster), and batches are spread over spawned worker processes while the GPU samples the next batch
(`ShapesScorer.submit`). No torch here: the workers import only this module's needs.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import Future, ProcessPoolExecutor
from functools import lru_cache
from typing import Callable

import numpy as np

POOL_MIN_IMAGES = 16  # smaller batches are checked in this process
POOL_MAX_WORKERS = 16  # a round checks over a thousand images; the sampling process keeps a core of its own
CHUNK_IMAGES = 16  # images a worker task: small enough to spread one decode batch, large enough to pay its IPC


@lru_cache(maxsize=4096)
def _scene(caption: str):
    from ...nano.shapes import parse_caption

    return parse_caption(caption)


# -- the checker on uint8 arrays ------------------------------------------------------------------------------

def palette_labels_uint8(pixels: np.ndarray, tolerance: float) -> np.ndarray:
    """`adherence.palette_labels` of a uint8 image [H, W, 3]: the same labels [H, W] (-1: none within tolerance),
    as int8.

    Squared distances of integers are exact integers, and the float32 norms the reference compares are their
    correctly rounded square roots: distinct below 3 x 255^2, so the nearest colour, ties (first wins) and the
    tolerance test (d^2 > tolerance^2 for an integer tolerance) come out the same."""
    from ...nano.adherence import PALETTE

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


def runs_components(mask: np.ndarray, min_pixels: float = 0) -> list[np.ndarray]:
    """`adherence.components` with the row runs of the whole mask found at once: the same regions, same order.

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


def look_uint8(pixels: np.ndarray):
    """`adherence.look` of a uint8 RGB array [H, W, 3], at the default tolerance: the same `Frame`."""
    from ...nano.adherence import COLOR_TOLERANCE, MIN_AREA, Frame
    from ...nano.shapes import BACKGROUNDS, COLORS

    height, width = pixels.shape[:2]
    labels = palette_labels_uint8(pixels, COLOR_TOLERANCE)
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
        regions[name] = runs_components(mask, min_pixels) if mask.any() else []
    return Frame(regions, background if distance[background] <= COLOR_TOLERANCE else None, math.sqrt(height * width),
                 height * width, min_pixels)


def check_uint8(pixels: np.ndarray, scene):
    """`adherence.check_image(pixels, scene)` for a uint8 RGB array [H, W, 3]: the same `AdherenceResult`."""
    from ...nano.adherence import AdherenceResult, _check_object

    frame = look_uint8(pixels)
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


def shapes_score(pixels: np.ndarray, caption: str) -> float:
    """Partial-credit adherence of one uint8 RGB image [H, W, 3] to a caption of the grammar, in [0, 1]."""
    if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3:
        result = check_uint8(pixels, _scene(caption))
    else:
        from ...nano.adherence import check_image

        result = check_image(pixels, _scene(caption))
    hits = sum(int(o.color) + int(o.shape) + int(o.position) + int(o.size) for o in result.objects)
    hits += int(result.background) + int(not result.extra_objects)
    return hits / (4 * len(result.objects) + 2)


def _score_many(items: list[tuple[np.ndarray, str]]) -> list[float]:
    return [shapes_score(pixels, caption) for pixels, caption in items]


# -- the pool -------------------------------------------------------------------------------------------------

class ShapesScorer:
    """Scores batches of (image, caption); a pool of spawned workers (no forked CUDA state) for large batches on
    machines with cores to spare. `submit` returns at once: the caller samples and decodes the next batch while
    the workers check this one."""

    def __init__(self, workers: int | None = None):
        cores = os.cpu_count() or 1
        self.workers = min(POOL_MAX_WORKERS, cores - 1) if workers is None else workers
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, images: list[np.ndarray], captions: list[str]) -> list[float]:
        return self.submit(images, captions)()

    def submit(self, images: list[np.ndarray], captions: list[str]) -> Callable[[], list[float]]:
        """Start checking; the returned function waits for the scores (in order)."""
        for caption in set(captions):
            _scene(caption)  # a caption outside the grammar fails here, in this process, with its one-line error
        items = list(zip(images, captions))
        if self.workers < 2 or len(items) < POOL_MIN_IMAGES:
            scores = _score_many(items)
            return lambda: scores
        if self._pool is None:
            import multiprocessing

            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
        chunk = min(CHUNK_IMAGES, -(-len(items) // self.workers))
        parts: list[Future] = [self._pool.submit(_score_many, items[i : i + chunk])
                               for i in range(0, len(items), chunk)]
        return lambda: [score for part in parts for score in part.result()]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
