"""The one thread that owns the models: takes batches from the scheduler, runs them, answers each job.

Torch releases the GIL inside its ops, so the HTTP handlers stay responsive while a batch runs. Each image is
encoded with the same metadata record `sana gen` writes (`GenerationRecord`), so `sana info` and `--from` read a
served image like a generated file; clips are written by `clips.run_clip` the way `sana video` / `sana world`
write them.

Every phase and denoising step is published to the jobs' progress ids (`progress.ProgressHub`) and to a clip job's
record; a batch whose clients have all gone (disconnected, or deleted their clip job) stops at its next step.
"""

from __future__ import annotations

import logging
import threading
import time

from .admission import ServedModel
from .metrics import Metrics
from .progress import ProgressHub
from .scheduler import Job, Scheduler

log = logging.getLogger("sana.serve")
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class Interrupted(Exception):
    """Every job of the running batch was withdrawn: the batch stops at its next step."""


class Worker:
    def __init__(self, models: dict[str, ServedModel], scheduler: Scheduler, metrics: Metrics,
                 progress: ProgressHub | None = None):
        self.models = models
        self.scheduler = scheduler
        self.metrics = metrics
        self.progress = progress or ProgressHub()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sana-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self.scheduler.close()
        self._thread.join(timeout)

    def _loop(self) -> None:
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
            if all(job.gone.is_set() for job in batch):
                raise Interrupted("every request of the batch was withdrawn")
            self.publish(batch, {"status": "running", "phase": "denoise", "step": done, "total": total})

        return Events(on_phase=on_phase, on_step=on_step,
                      on_notice=lambda text: log.info("%s: %s", model.name, text))

    def run_batch(self, batch: list[Job]) -> None:
        """Generate every job of `batch` in one forward and set each job's future to its encoded images
        (a list of bytes), or to the exception that stopped the batch. A clip job is a batch of its own."""
        model = self.models[batch[0].model]
        self.publish(batch, {"status": "running", "phase": "start"})
        if batch[0].kind == "clip":
            return self._run_clip(model, batch[0])
        images = sum(job.images for job in batch)
        self.metrics.batch(images)
        try:
            if model.loras is not None:
                model.loras.use(*(batch[0].context.get("lora") or (None, None)))
            results = model.pipeline.generate_batch([job.request for job in batch], self.events(model, batch))
            answers = [[encode(model, job, result, image, seed, images)
                        for image, seed in zip(result.images, job.request.seeds)]
                       for job, result in zip(batch, results)]
        except Exception as exc:  # the batch failed: each of its requests is answered with the error, none waits on
            self._failed(model, batch, exc)
            return
        now = time.monotonic()
        for job, answer in zip(batch, answers):
            self.metrics.finished(model.name, now - job.enqueued, job.images)
            self.progress.publish(job.progress_id, {"status": "done"})
            job.future.set_result(answer)

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
            log.info("batch of %d request(s) for %s stopped: %s", len(batch), model.name, exc)
            self.publish(batch, {"status": "cancelled"})
        else:
            log.error("batch of %d request(s) for %s failed: %s: %s", len(batch), model.name, type(exc).__name__,
                      exc)
            self.publish(batch, {"status": "failed", "message": str(exc)[:500]})
        for job in batch:
            job.future.set_exception(exc)


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
               "images_in_batch": images_in_batch, "memory": result.memory, "served": True},
    )
    return image_bytes(image, record, FORMATS[job.context["output_format"]])
