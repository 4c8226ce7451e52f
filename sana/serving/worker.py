"""The one thread that owns the models: takes batches from the scheduler, runs them, answers each job.

Torch releases the GIL inside its ops, so the HTTP handlers stay responsive while a batch runs. A finished batch's
images go to the encoding threads (`encoding.Encoder`) and the worker takes the next batch at once: each image is
encoded there with the same metadata record `sana gen` writes (`GenerationRecord`), so `sana info` and `--from`
read a served image like a generated file, and each job is answered when its own images are. Clips are written by
`clips.run_clip` the way `sana video` / `sana world` write them.

With `warmup`, the thread first generates each image model's default request at batch 1 and at the full batch
(`warmup.warm_up`); until then `warming` is True (`/healthz` answers 503) and queued requests wait.

Every phase and denoising step is published to the jobs' progress ids (`progress.ProgressHub`) and to a clip job's
record; a batch whose clients have all gone (disconnected, or deleted their clip job) stops at its next step.
"""

from __future__ import annotations

import logging
import threading
import time

from .admission import ServedModel
from .encoding import Encoder, encoder_threads
from .metrics import Metrics
from .progress import ProgressHub
from .scheduler import Job, Scheduler

log = logging.getLogger("sana.serve")


class Interrupted(Exception):
    """Every job of the running batch was withdrawn, or the server is stopping: the batch stops at its next
    step."""


STOPPING = "the server is shutting down"


class Worker:
    """Runs the batches of `scheduler` (None where the caller hands batches to `run_batch` itself: a worker process,
    a Ray replica). `max_batch` (default: the scheduler's) sizes the warm-up's full batch and the encoding threads
    (`encode_threads` overrides them)."""

    def __init__(self, models: dict[str, ServedModel], scheduler: Scheduler | None, metrics: Metrics,
                 progress: ProgressHub | None = None, *, max_batch: int | None = None, warmup: bool = False,
                 encode_threads: int | None = None):
        self.models = models
        self.scheduler = scheduler
        self.metrics = metrics
        self.progress = progress or ProgressHub()
        self.max_batch = max_batch or (scheduler.max_batch if scheduler is not None else 1)
        accelerator = any(not str(m.device).startswith("cpu") for m in models.values())
        self.encoder = Encoder(encode_threads or encoder_threads(accelerator, self.max_batch))
        self.warmup = warmup
        self.warmup_seconds: float | None = None  # how long the warm-up took, once done
        self._ready = threading.Event()
        if not warmup:
            self._ready.set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sana-worker", daemon=True)

    @property
    def warming(self) -> bool:
        """The warm-up has not finished yet."""
        return not self._ready.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.scheduler.close()
        self._thread.join(timeout)
        self.encoder.close()

    def warm_up(self) -> None:
        """Warm the image models (`warmup.warm_up`), then say so (`warming` turns False)."""
        from .warmup import warm_up

        try:
            self.warmup_seconds = warm_up(self.models, self.max_batch)
        finally:
            self._ready.set()

    def _loop(self) -> None:
        if self.warmup:
            self.warm_up()
        while not self._stop.is_set():
            batch = self.scheduler.next_batch(timeout=0.5)
            if batch:
                self.run_batch(batch)

    def publish(self, batch: list[Job], event: dict) -> None:
        for job in batch:
            self.progress.publish(job.progress_id, event)
            watch = job.context.get("watch")
            if watch is not None:
                watch(event)

    def events(self, model: ServedModel, batch: list[Job]):
        """The pipeline's Events for `batch`: phases and steps published, a notice logged, and a stop (Interrupted)
        at the next step once every job's client has gone."""
        from ..pipelines.common import Events

        def on_phase(name: str) -> None:
            self.publish(batch, {"status": "running", "phase": name})

        def on_step(done: int, total: int) -> None:
            if self.scheduler is not None and self.scheduler.closed:
                raise Interrupted(STOPPING)
            if all(job.gone.is_set() for job in batch):
                raise Interrupted("every request of the batch was withdrawn")
            self.publish(batch, {"status": "running", "phase": "denoise", "step": done, "total": total})

        return Events(on_phase=on_phase, on_step=on_step,
                      on_notice=lambda text: log.info("%s: %s", model.name, text))

    def run_batch(self, batch: list[Job]) -> None:
        """Generate every job of `batch` in one forward and hand the images to the encoding threads; returns then,
        before they are encoded. Each job's future is set to its encoded images (a list of bytes) once they are, or
        to the exception that stopped the batch (every job) or the encoding of that job's images (that job only).
        A clip job is a batch of its own, answered before this returns."""
        model = self.models[batch[0].model]
        self.publish(batch, {"status": "running", "phase": "start"})
        if batch[0].kind == "clip":
            return self._run_clip(model, batch[0])
        self.metrics.batch(sum(job.images for job in batch))
        try:
            if model.loras is not None:
                model.loras.use(*(batch[0].context.get("lora") or (None, None)))
            results = model.pipeline.generate_batch([job.request for job in batch], self.events(model, batch))
            self.encoder.submit(model, batch, results,
                                lambda job, encoded, error: self._answer(model, job, encoded, error))
        except Exception as exc:  # the batch failed: each of its requests is answered with the error, none waits on
            self._failed(model, batch, exc)

    def _answer(self, model: ServedModel, job: Job, encoded: list[bytes] | None, error: Exception | None) -> None:
        """A job whose images are encoded (an encoding thread calls this): answered, or failed alone."""
        if error is not None:
            self._failed(model, [job], error)
            return
        self.metrics.finished(model.name, time.monotonic() - job.enqueued, job.images)
        self.progress.publish(job.progress_id, {"status": "done"})
        job.future.set_result(encoded)

    def _run_clip(self, model: ServedModel, job: Job) -> None:
        from .clips import run_clip

        try:
            if model.loras is not None:
                model.loras.use(*(job.context.get("lora") or (None, None)))
            answer = run_clip(model, job, self.events(model, [job]))
        except Exception as exc:
            self._failed(model, [job], exc)
            return
        self.metrics.finished(model.name, time.monotonic() - job.enqueued, 0)
        self.publish([job], {"status": "done"})
        job.future.set_result(answer)

    def _failed(self, model: ServedModel, batch: list[Job], exc: Exception) -> None:
        if isinstance(exc, Interrupted):
            # at shutdown each request's 503 is its log line already
            (log.debug if str(exc) == STOPPING else log.info)("batch of %d request(s) for %s stopped: %s", len(batch), model.name, exc)
            self.publish(batch, {"status": "cancelled"})
        else:
            log.error("batch of %d request(s) for %s failed: %s: %s", len(batch), model.name, type(exc).__name__,
                      exc)
            self.publish(batch, {"status": "failed", "message": str(exc)[:500]})
        for job in batch:
            job.future.set_exception(exc)

