"""The queue between the HTTP handlers and the worker: bounded, FIFO, batching requests that can share a forward.

The oldest waiting job always leads the next batch; younger jobs with the same key (model and `batch_key`: size,
steps, guidance, sampler, PAG) join it, oldest first, up to `max_batch` images, for at most `window` seconds
after the leader was taken. A job whose client has gone is dropped when it reaches the front, before it runs.
A request with `n` images is one job, so its images always share a forward.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any


class QueueFull(Exception):
    """The queue holds `max_queue` jobs already (answered 429)."""


class ClientGone(Exception):
    """The job was dropped: its client disconnected before it ran."""


@dataclass
class Job:
    """One HTTP request's work: `request` (an ImageRequest, or a clip's VideoRequest / WorldRequest) for the model
    `model`, answered through `future`."""

    model: str
    key: tuple  # what jobs must share to be batched (model, the pipeline's batch_key, LoRA); a clip's is its own
    request: Any
    images: int  # images the job asks for (its seeds)
    context: dict = field(default_factory=dict)  # what the answer needs besides the pixels (output format, ...)
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)
    gone: threading.Event = field(default_factory=threading.Event)  # set when the client disconnects (or deletes)
    kind: str = "image"  # "image" or "clip"
    progress_id: str | None = None  # where the worker publishes the job's steps (progress.ProgressHub)


class Scheduler:
    """A bounded FIFO of jobs; `next_batch` hands the worker the next batch (blocking)."""

    def __init__(self, *, max_batch: int, window: float, max_queue: int, on_drop=None):
        self.max_batch = max(1, max_batch)
        self.window = max(0.0, window)
        self.max_queue = max(1, max_queue)
        self.on_drop = on_drop  # called with each dropped job (metrics)
        self._jobs: deque[Job] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._ready:
            return len(self._jobs)

    def submit(self, job: Job) -> Future:
        with self._ready:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise QueueFull(f"the queue is full ({self.max_queue} requests waiting)")
            self._jobs.append(job)
            self._ready.notify_all()
        return job.future

    def withdraw(self, job: Job) -> None:
        """The job's client has gone: drop the job now if it still waits (a running one finishes unanswered)."""
        job.gone.set()
        with self._ready:
            self._drop_gone()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Wake the worker for good; jobs still waiting fail."""
        with self._ready:
            self._closed = True
            waiting, self._jobs = list(self._jobs), deque()
            self._ready.notify_all()
        for job in waiting:
            job.future.set_exception(QueueFull("the server is shutting down"))

    def fail_waiting(self, error: Exception) -> None:
        """Every waiting job fails with `error` (nothing is left to run them); the queue stays open."""
        with self._ready:
            waiting, self._jobs = list(self._jobs), deque()
        for job in waiting:
            job.future.set_exception(error)

    def next_batch(self, timeout: float | None = None) -> list[Job]:
        """The next batch, oldest job first; [] after `timeout` seconds without work or once closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            # 1. The leader: the oldest job whose client is still there.
            leader = None
            while leader is None:
                self._drop_gone()
                if self._closed:
                    return []
                if self._jobs:
                    leader = self._jobs.popleft()
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return []
                self._ready.wait(left)
            batch, images = [leader], leader.images
            # 2. Followers with the leader's key, oldest first, until the batch is full or the window closes.
            window_ends = time.monotonic() + self.window
            while images < self.max_batch and not self._closed:
                self._drop_gone()
                for job in list(self._jobs):
                    if job.key == leader.key and images + job.images <= self.max_batch:
                        self._jobs.remove(job)
                        batch.append(job)
                        images += job.images
                left = window_ends - time.monotonic()
                if images >= self.max_batch or left <= 0:
                    break
                self._ready.wait(left)
            return batch

    def _drop_gone(self) -> None:
        gone = [job for job in self._jobs if job.gone.is_set()]
        for job in gone:
            self._jobs.remove(job)
            job.future.set_exception(ClientGone("the client disconnected before its request ran"))
            if self.on_drop:
                self.on_drop(job)
