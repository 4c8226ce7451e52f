"""Encoding finished images off the thread that owns the models.

A PNG of a 1024 px image takes a few tenths of a second on the CPU: encoded one after another in the worker thread,
a batch of four leaves the GPU idle for longer than the batch took to generate. `Encoder` is a pool of threads
(Pillow's encoders release the GIL while they compress) that the worker hands each finished batch to before it
takes the next one: each job is answered (`answer(job, encoded, error)`) once its own images are encoded, in the
order of its seeds, and an error encoding one job's image answers that job only.

At most `pending` batches wait for their encoding; the worker's hand-over blocks beyond that, so a CPU slower than
the GPU holds back generation instead of piling up decoded images in memory.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from .admission import ServedModel
from .scheduler import Job

FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
PENDING_BATCHES = 2  # batches being encoded while the next one generates
KERNEL_THREADS = 2  # CPUs left to the worker thread launching the GPU's kernels and to the HTTP event loop

Answer = Callable[[Job, "list[bytes] | None", "Exception | None"], None]


def encoder_threads(accelerator: bool, max_batch: int) -> int:
    """Encoding threads: one an image of a full batch, out of the CPUs this process may use less those torch keeps
    busy. On an accelerator torch needs the worker thread (kernel launches) and the event loop; on the CPU torch's
    own thread pool (`sana.device.cpu_threads`, set when the device was picked) takes the cores, so one thread
    encodes there. The load average is not subtracted as `cpu_threads` does: encoding comes in short bursts."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        usable = os.cpu_count() or 1
    kept = KERNEL_THREADS if accelerator else torch.get_num_threads()
    return max(1, min(max_batch, usable - kept))


class Encoder:
    """The encoding threads. `submit` hands over a finished batch and returns at once (unless `pending` batches are
    still being encoded); `close` waits for every handed-over job to be answered."""

    def __init__(self, threads: int, *, pending: int = PENDING_BATCHES):
        self.threads = max(1, threads)
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="sana-encode")
        self._slots = threading.BoundedSemaphore(max(1, pending))
        self._closed = False

    def submit(self, model: ServedModel, batch: list[Job], results: list, answer: Answer) -> None:
        """Encode each job's images (`results[i]` is `batch[i]`'s ImageResult) and call `answer` for the job once
        they are: with the encoded images in seed order, or with the first error."""
        if self._closed:
            raise RuntimeError("the server is shutting down")
        images_in_batch = sum(job.images for job in batch)
        self._slots.acquire()
        batch_left = _Countdown(len(batch), self._slots.release)
        for job, result in zip(batch, results):
            parts = [self._pool.submit(encode, model, job, result, image, seed, images_in_batch)
                     for image, seed in zip(result.images, job.request.seeds)]
            _when_all(parts, _Finish(job, parts, answer, batch_left))

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=True)


class _Finish:
    """Answer one job from its images' futures, then count it off its batch."""

    def __init__(self, job: Job, parts: list[Future], answer: Answer, batch_left: "_Countdown"):
        self.job, self.parts, self.answer, self.batch_left = job, parts, answer, batch_left

    def __call__(self) -> None:
        try:
            error = next((part.exception() for part in self.parts if part.exception() is not None), None)
            self.answer(self.job, None if error else [part.result() for part in self.parts], error)
        finally:
            self.batch_left.tick()


class _Countdown:
    """Calls `on_zero` once `count` ticks have come (from any thread)."""

    def __init__(self, count: int, on_zero: Callable[[], None]):
        self._count = count
        self._on_zero = on_zero
        self._lock = threading.Lock()
        if count == 0:
            on_zero()

    def tick(self) -> None:
        with self._lock:
            self._count -= 1
            zero = self._count == 0
        if zero:
            self._on_zero()


def _when_all(futures: list[Future], callback: Callable[[], None]) -> None:
    left = _Countdown(len(futures), callback)
    for future in futures:
        future.add_done_callback(lambda _future: left.tick())


def encode(model: ServedModel, job: Job, result, image, seed: int, images_in_batch: int) -> bytes:
    """One image in the job's output format, carrying the record `sana gen` writes for it."""
    from .. import __version__
    from ..outputs import GenerationRecord
    from ..outputs.images import image_bytes

    request = job.request
    lora = job.context.get("lora")
    loras = [model.loras.allowed[lora[0]].record(lora[1])] if lora else []
    record = GenerationRecord(
        prompt=request.prompt, negative_prompt=request.negative_prompt, model=model.name, model_repo=model.repo,
        model_revision=model.revision, family=model.family, seed=seed, steps=request.steps,
        guidance=request.guidance, pag=request.pag, pag_layers=list(request.pag_layers) if request.pag > 0 else [],
        sampler=request.sampler, flow_shift=request.flow_shift, width=request.width, height=request.height,
        dtype=model.dtype, loras=loras, version=__version__,
        timings={k: round(v, 3) for k, v in result.timings.items()},
        extra={"device": model.device, "generated_size": list(result.generated_size),
               "images_in_batch": images_in_batch, "memory": result.memory, "served": True,
               **request.record_extra()},
    )
    return image_bytes(image, record, FORMATS[job.context["output_format"]])
