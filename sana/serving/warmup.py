"""Warming the served image models before the server says it is ready.

The first request after start would otherwise pay one-time costs: the CUDA graph of the denoising step captured for
its batch size (`sana.graphs.GraphedForward`: one graph per input shape), cuBLAS and cuDNN choosing their algorithms,
the first launch of each kernel, the first PNG encoded. `warm_up` generates each image model's native square once
with one image and once with a full batch (`--max-batch`), with what a request that sets nothing gets (the model's
default steps, guidance, PAG, sampler: the same graphs) and a prompt of ordinary length (the text rows are trimmed
to a multiple of 64 tokens, part of the graph's shape); the images are discarded.

On the CPU there is nothing of the kind to pay (no graphs, no autotuning) while a generation costs seconds, so
`sana serve` warms up only on an accelerator unless `--warmup` asks (`should_warm_up`).
"""

from __future__ import annotations

import dataclasses
import logging
import time

from .admission import ServedModel, build_job
from .schemas import ApiError, ImageGenerationRequest

log = logging.getLogger("sana.serve")
PROMPT = "a red apple on a wooden table next to a glass of water, soft morning light"
SEED = 0


def should_warm_up(asked: bool | None, devices: list[str]) -> bool:
    """`--warmup` / `--no-warmup` when given; otherwise only when a model runs on an accelerator."""
    if asked is not None:
        return asked
    return any(not str(device).startswith("cpu") for device in devices)


def warm_up(models: dict[str, ServedModel], max_batch: int) -> float:
    """Generate (and encode one image of) each image model's default request at batch 1 and at `max_batch`;
    returns the seconds it took and logs them in one line. A failure is logged and the server serves anyway:
    the requests that meet it get their own error."""
    from ..pipelines.common import Events
    from .encoding import encode

    start = time.perf_counter()
    done = []
    for model in models.values():
        if model.kind != "image" or model.pipeline is None:
            continue
        try:
            job = build_job(models, ImageGenerationRequest(prompt=PROMPT, model=model.name, seed=SEED),
                            max_batch=max_batch)
        except ApiError as exc:
            log.warning("warm-up of %s skipped: %s", model.name, exc.message)
            continue
        request = job.request
        events = Events(on_notice=lambda text, name=model.name: log.info("%s: %s", name, text))
        sizes = []
        for images in sorted({1, max_batch}):
            refusal = model.size_refusal(request.width, request.height, images)
            if refusal:
                log.info("warm-up of %s skips %d images: %s", model.name, images, refusal)
                continue
            try:
                if model.loras is not None:
                    model.loras.use(None, None)
                # one request an image, as separate clients fill a batch (the text encoder sees as many rows)
                batch = [dataclasses.replace(request, seeds=[SEED + i]) for i in range(images)]
                result = model.pipeline.generate_batch(batch, events)[0]
                encode(model, job, result, result.images[0], SEED, images)
            except Exception as exc:
                log.error("warm-up of %s with %d image(s) failed: %s: %s", model.name, images, type(exc).__name__,
                          exc)
                continue
            sizes.append(str(images))
        if sizes:
            done.append(f"{model.name} ({' and '.join(sizes)} image(s) at {request.width}x{request.height}, "
                        f"{request.steps} steps)")
    seconds = time.perf_counter() - start
    log.info("warmed up in %.1f s: %s", seconds, ", ".join(done) or "no image model")
    return seconds
