"""The one thread that owns the models: takes batches from the scheduler, runs them, answers each job.

Torch releases the GIL inside its ops, so the HTTP handlers stay responsive while a batch runs. Each image is
encoded with the same metadata record `sana gen` writes (`GenerationRecord`), so `sana info` and `--from` read a
served image like a generated file.
"""

from __future__ import annotations

import logging
import threading
import time

from .admission import ServedModel
from .metrics import Metrics
from .scheduler import Job, Scheduler

log = logging.getLogger("sana.serve")
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class Worker:
    def __init__(self, models: dict[str, ServedModel], scheduler: Scheduler, metrics: Metrics):
        self.models = models
        self.scheduler = scheduler
        self.metrics = metrics
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

    def run_batch(self, batch: list[Job]) -> None:
        """Generate every job of `batch` in one forward and set each job's future to its encoded images
        (a list of bytes), or to the exception that stopped the batch."""
        from ..pipelines.common import Events

        model = self.models[batch[0].model]
        images = sum(job.images for job in batch)
        self.metrics.batch(images)
        try:
            results = model.pipeline.generate_batch([job.request for job in batch],
                                                    Events(on_notice=lambda text: log.info("%s: %s", model.name, text)))
            answers = [[encode(model, job, result, image, seed, images)
                        for image, seed in zip(result.images, job.request.seeds)]
                       for job, result in zip(batch, results)]
        except Exception as exc:  # the batch failed: each of its requests is answered with the error, none waits on
            log.error("batch of %d request(s) for %s failed: %s: %s", len(batch), model.name, type(exc).__name__, exc)
            for job in batch:
                job.future.set_exception(exc)
            return
        now = time.monotonic()
        for job, answer in zip(batch, answers):
            self.metrics.finished(model.name, now - job.enqueued, job.images)
            job.future.set_result(answer)


def encode(model: ServedModel, job: Job, result, image, seed: int, images_in_batch: int) -> bytes:
    """One image in the job's output format, carrying the record `sana gen` writes for it."""
    from .. import __version__
    from ..outputs import GenerationRecord
    from ..outputs.images import image_bytes

    request = job.request
    record = GenerationRecord(
        prompt=request.prompt, negative_prompt=request.negative_prompt, model=model.name, model_repo=model.repo,
        model_revision=model.revision, family=model.family, seed=seed, steps=request.steps,
        guidance=request.guidance, pag=request.pag, pag_layers=list(request.pag_layers) if request.pag > 0 else [],
        sampler=request.sampler, flow_shift=request.flow_shift, width=request.width, height=request.height,
        dtype=model.dtype, loras=[], version=__version__,
        timings={k: round(v, 3) for k, v in result.timings.items()},
        extra={"device": model.device, "generated_size": list(result.generated_size),
               "images_in_batch": images_in_batch, "memory": result.memory, "served": True},
    )
    return image_bytes(image, record, FORMATS[job.context["output_format"]])
