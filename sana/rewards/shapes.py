"""The `shapes` reward: the nano grammar's analytic checker with partial credit, over a process pool.

Score of one image = (attributes right over all objects (colour, shape, position, size: four each) + the
background + "nothing else drawn") / (4 x objects + 2): 1 exactly when the image is fully correct, and every
attribute fixed moves it. A round checks over a thousand images (`adherence.check_image` takes uint8 images by its
integer route), so batches are spread over spawned worker processes while the GPU samples the next batch
(`ShapesScorer.submit`). No torch here: the workers import only this module's needs.
"""

from __future__ import annotations

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
    from ..nano.shapes import parse_caption

    return parse_caption(caption)


def shapes_score(pixels: np.ndarray, caption: str) -> float:
    """Partial-credit adherence of one uint8 RGB image [H, W, 3] to a caption of the grammar, in [0, 1]."""
    from ..nano.adherence import check_image

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
