"""What a request may ask of a served model, and an image request body turned into a queued `Job` (clips:
`clips.py`).

Caps beyond the schema's: `n` up to the server's batch (the memory plan was made for it), the sampler the model
takes, steps (SANA-Sprint: 1 to 4), a LoRA only from the server's allow-list, and the size: sides multiples of 32,
at most `MAX_SIDE_FACTOR` times the model's native side, and a size whose generation the memory plan says cannot
fit is refused with the plan's reason (a 400 now rather than an out-of-memory error later).
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from .scheduler import Job
from .schemas import ApiError, ImageGenerationRequest

SIZE_MULTIPLE = 32
MAX_SIDE_FACTOR = 4  # past 4x the native side, the DiT's output is only upscaled further
SIZE_RE = re.compile(r"(\d{1,6})x(\d{1,6})")
MAX_PLANS = 1024  # memory plans kept per model, the oldest dropped first


# The kind of output each model family makes, and the route that asks for it.
FAMILY_KINDS = {"sana": "image", "sana1.5": "image", "sprint": "image", "video": "video", "wm": "world"}


@dataclass
class ServedModel:
    """One loaded model and what answering for it needs. `plan_for(width, height, images, frames)` is the memory
    plan for such a batch (sana.memory.plan_memory on this device, with the server's mode and cap), or None to
    skip. `loras`: the allow-listed LoRAs that fit this model (a `loras.LoraSwitch`), or None."""

    name: str
    pipeline: Any  # sana.pipelines: ImagePipeline, VideoPipeline or WorldPipeline
    family: str
    defaults: Any  # registry.ModelDefaults (images) or registry.ClipDefaults
    resolution: int  # native side, px
    dtype: str
    device: str
    created: int
    repo: str | None = None
    revision: str | None = None
    plan_for: Callable[..., Any] | None = None
    loras: Any = None
    refiner: Any = None  # a world model's stage 2 (`pipelines.world_refiner.WorldRefiner`), when loaded
    num_layers: int | None = None  # the DiT's blocks, from its config (known where the weights live elsewhere)
    _plans: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def kind(self) -> str:
        """"image", "video" or "world"."""
        return FAMILY_KINDS.get(self.family, "image")

    @property
    def sprint(self) -> bool:
        return self.family == "sprint"

    @property
    def samplers(self) -> tuple[str, ...]:
        return ("scm",) if self.sprint else ("flow-dpm", "flow-euler")

    def size_refusal(self, width: int, height: int, images: int, frames: int = 1) -> str | None:
        """Why `images` images (clips of `frames` frames) of width x height cannot be generated here, or None."""
        if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
            return f"sides must be multiples of {SIZE_MULTIPLE}"
        side = self.resolution * MAX_SIDE_FACTOR
        if not (SIZE_MULTIPLE <= width <= side and SIZE_MULTIPLE <= height <= side):
            return f"sides go from {SIZE_MULTIPLE} to {side} px for {self.name} ({MAX_SIDE_FACTOR}x its native size)"
        plan = self.plan(width, height, images, frames)
        return None if plan is None or plan.fits else f"it does not fit in memory: {plan.notes()[0]}"

    def plan(self, width: int, height: int, images: int, frames: int = 1):
        """The memory plan for such a batch (kept: requests repeat sizes), or None where there is no planner."""
        if self.plan_for is None:
            return None
        key = (width, height, images, frames)
        with self._lock:
            if key not in self._plans:
                if len(self._plans) >= MAX_PLANS:
                    self._plans.pop(next(iter(self._plans)))
                self._plans[key] = self.plan_for(width, height, images) if frames == 1 else \
                    self.plan_for(width, height, images, frames)
            return self._plans[key]

    @property
    def blocks(self) -> int | None:
        """The DiT's block count: from its config, else from the loaded transformer."""
        if self.num_layers is not None:
            return self.num_layers
        config = getattr(getattr(self.pipeline, "transformer", None), "config", None)
        return getattr(config, "num_layers", None)


def parse_size(text: str | None, native: int) -> tuple[int, int]:
    """"WxH" -> (W, H); None or "auto" -> the model's native square."""
    if text is None or text.strip().lower() == "auto":
        return native, native
    match = SIZE_RE.fullmatch(text.strip().lower())
    if not match:
        raise ApiError(400, f"cannot read the size '{text[:40]}': use WxH, e.g. {native}x{native}", param="size",
                       code="invalid_size")
    return int(match.group(1)), int(match.group(2))


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def pick_model(models: dict[str, ServedModel], name: str | None, kinds: tuple[str, ...]) -> ServedModel:
    """The model a request names, or the only one of `kinds` when it names none; 4xx otherwise."""
    route = "/v1/images/generations" if "image" in kinds else "/v1/videos"
    if name is None:
        fitting = [m for m in models.values() if m.kind in kinds]
        if len(fitting) == 1:
            return fitting[0]
        if not fitting:
            raise ApiError(400, f"no model served here answers {route} (served: {', '.join(models)})",
                           param="model", code="model_not_found")
        raise ApiError(400, f"this server serves several models: name one of {', '.join(m.name for m in fitting)}",
                       param="model", code="model_required")
    if name not in models:
        raise ApiError(404, f"the model '{name[:80]}' is not served here (served: {', '.join(models)})",
                       param="model", code="model_not_found")
    model = models[name]
    if model.kind not in kinds:
        other = "/v1/images/generations" if model.kind == "image" else "/v1/videos"
        raise ApiError(400, f"{name} makes {'images' if model.kind == 'image' else 'clips'}: ask {other}",
                       param="model", code="wrong_model_kind")
    return model


def pick_lora(model: ServedModel, name: str | None, scale: float | None) -> tuple[str, float] | None:
    """(name, scale) of an allow-listed LoRA that fits `model`, or None for none; 400 for any other name."""
    if name is None:
        if scale is not None:
            raise ApiError(400, "lora_scale without a lora", param="lora_scale", code="invalid_value")
        return None
    allowed = model.loras.allowed if model.loras is not None else {}
    if name not in allowed:
        names = ", ".join(allowed) or "none"
        raise ApiError(400, f"the LoRA '{name[:80]}' is not on this server's list for {model.name} (listed: {names})",
                       param="lora", code="lora_not_found")
    return name, allowed[name].scale if scale is None else float(scale)


def refuse_unanswerable(body: ImageGenerationRequest) -> None:
    """A 400 for OpenAI options that would change what the answer is, rather than leave them unheeded."""
    if body.stream or body.partial_images:
        param = "stream" if body.stream else "partial_images"
        raise ApiError(400, "streaming is not supported: the images come in one JSON answer (for progress, send a "
                       "progress_id and read GET /v1/progress/{progress_id}, server-sent events)", param=param,
                       code="unsupported")
    if body.background == "transparent":
        raise ApiError(400, "transparent backgrounds are not supported: the images are RGB", param="background",
                       code="unsupported")


def build_job(models: dict[str, ServedModel], body: ImageGenerationRequest, *, max_batch: int) -> Job:
    """The queued job for a validated body; ApiError (4xx) for what this server cannot or will not do."""
    from ..pipelines.image import ImageRequest, batch_key

    # 1. What the answer would be (one JSON body of RGB images); the model (one of those loaded, the only image
    #    model when the body names none), and its LoRA.
    refuse_unanswerable(body)
    model = pick_model(models, body.model, ("image",))
    lora = pick_lora(model, body.lora, body.lora_scale)

    # 2. Batch, size and sampling settings against the model's limits.
    if body.n > max_batch:
        raise ApiError(400, f"n {body.n} is more than this server generates in one batch ({max_batch})", param="n",
                       code="invalid_n")
    width, height = parse_size(body.size, model.resolution)
    refusal = model.size_refusal(width, height, body.n)
    if refusal:
        raise ApiError(400, f"size {width}x{height} cannot be served: {refusal}", param="size", code="invalid_size")
    d = model.defaults
    # Settings the LoRA carries (an RL LoRA's rollout guidance) come before the model's defaults, after the body's.
    carried = model.loras.allowed[lora[0]].sampling if lora is not None else {}
    sampler = body.sampler or carried.get("sampler") or d.sampler
    if sampler not in model.samplers:
        raise ApiError(400, f"unknown sampler '{sampler}' for {model.name}: use {', '.join(model.samplers)}",
                       param="sampler", code="invalid_sampler")
    steps = body.num_inference_steps or int(carried.get("steps") or d.steps)
    if model.sprint and not 1 <= steps <= 4:
        raise ApiError(400, f"num_inference_steps {steps} is out of range for SANA-Sprint (1 to 4)",
                       param="num_inference_steps", code="invalid_steps")
    pag = float(carried.get("pag", d.pag)) if body.pag_scale is None else body.pag_scale
    if model.sprint and pag > 0:
        raise ApiError(400, "PAG does not apply to SANA-Sprint", param="pag_scale", code="invalid_pag")

    # 3. The request the pipeline runs; the seeds as `sana gen --seed S --num N` draws them.
    seed = random_seed() if body.seed is None else body.seed
    request = ImageRequest(
        prompt=body.prompt, seeds=[(seed + i) & 0xFFFFFFFF for i in range(body.n)], width=width, height=height,
        steps=steps, sampler=sampler, flow_shift=body.flow_shift or float(carried.get("flow_shift") or d.shift),
        guidance=float(carried.get("guidance", d.cfg)) if body.guidance_scale is None else body.guidance_scale, negative_prompt=body.negative_prompt or "", pag=pag,
        pag_layers=(d.pag_layer if body.pag_layer is None else body.pag_layer,),
        max_timesteps=d.max_timesteps, intermediate_timesteps=d.intermediate_timesteps,
    )
    blocks = model.blocks
    if pag > 0 and blocks is not None and not request.pag_layers[0] < blocks:
        raise ApiError(400, f"pag_layer {request.pag_layers[0]} is past {model.name}'s last block", param="pag_layer",
                       code="invalid_value")
    context = {"output_format": body.output_format or "png", "response_format": body.response_format or "b64_json",
               "lora": lora}
    return Job(model=model.name, key=(model.name, batch_key(request), lora), request=request, images=body.n,
               context=context, progress_id=body.progress_id)
