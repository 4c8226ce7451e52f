"""Clip jobs for `POST /v1/videos`: a request body turned into a queued `Job` for a SANA-Video or SANA-WM model,
and the job run by the worker into an MP4 written as `sana video` / `sana world` write theirs (`sana.outputs`:
the same record, atomically), a world clip's `.camera.json` beside it.

Frames: `num_frames` or `seconds` x fps (not both), else the model's default; snapped to what the VAE makes (4k+1
or 8k+1); the final count is held to the cap (`frame_cap`). A world-model job needs a first frame
(`input_reference`) and a camera path: `actions` (as `sana world --actions` takes them) or `camera` (the JSON of a
camera file in a format `sana world --camera` reads), with the same resolver options (`fov`, `intrinsics`,
`pose_scale`, `speed`, `turn_rate`). The server fetches no URL and reads no file a client names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SanaError
from ..registry import ClipDefaults
from .admission import MAX_SIDE_FACTOR, SIZE_MULTIPLE, SIZE_RE, ServedModel, pick_model, random_seed
from .scheduler import Job
from .schemas import MAX_FRAMES, ApiError, VideoGenerationRequest

VIDEO_SAMPLERS = ("flow-dpm", "flow-euler")
MAX_IMAGE_SIDE = 8192
MAX_IMAGE_PIXELS = MAX_IMAGE_SIDE * MAX_IMAGE_SIDE  # a first frame larger than this is refused
ROPE_POSITIONS = 1024  # latent frames the world DiT's rotary table places (as `sana world` checks)
DATA_URL_RE = re.compile(r"data:image/[\w.+-]+;base64,(.*)", re.DOTALL)


@dataclass(frozen=True)
class Upload:
    """A file sent in a multipart body."""

    filename: str | None
    data: bytes


@dataclass(frozen=True)
class FirstFrame:
    image: Any  # PIL RGB image
    name: str  # what the record calls it (the uploaded file's name, or "input_reference")
    sha256: str


# -- admission ----------------------------------------------------------------------------------------------------

def build_clip_job(models: dict[str, ServedModel], body: VideoGenerationRequest, upload: Upload | None) -> Job:
    """The queued job for a validated body (decoding the first frame and resolving a camera path: call it off the
    event loop); ApiError (4xx) for what this server cannot or will not do."""
    model = pick_model(models, body.model, ("video", "world"))
    if body.reference_url:
        raise ApiError(400, "this server fetches no URL: send the first frame as input_reference (a file or a "
                       "base64 data URL)", param="reference_url", code="unsupported")
    first = first_frame(body.input_reference if upload is None else upload)
    d: ClipDefaults = model.defaults
    width, height = clip_size(model, body.size, first if model.kind == "video" else None)
    seed = random_seed() if body.seed is None else body.seed
    steps = body.num_inference_steps or d.steps
    guidance = d.cfg if body.guidance_scale is None else body.guidance_scale
    shift = body.flow_shift or d.shift
    if model.kind == "world":
        request, fps, frames = _world_request(model, body, first, width, height, seed, steps, guidance, shift)
    else:
        request, fps, frames = _video_request(model, body, first, width, height, seed, steps, guidance, shift)
    if body.refine and model.kind != "world":
        raise ApiError(400, f"{model.name} is not a world model: refine is SANA-WM's stage 2", param="refine",
                       code="invalid_value")
    if body.refine and model.refiner is None:
        raise ApiError(400, f"this server has no refiner for {model.name} (start it with --refiner {model.name})",
                       param="refine", code="unsupported")
    if body.refine:
        from ..pipelines.world_refiner import check_refinable

        if refusal := check_refinable(frames):
            raise ApiError(400, refusal, param="num_frames", code="invalid_value")
    refusal = model.size_refusal(width, height, 1, frames)
    if refusal:
        raise ApiError(400, f"{frames} frames at {width}x{height} cannot be served: {refusal}", param="size",
                       code="invalid_size")
    # The record's memory plan is this job's (the one admission checked), not the one the model was loaded with.
    context = {"fps": fps, "first": first, "lora": None, "camera": getattr(request, "camera", None),
               "refiner": model.refiner if body.refine else None,
               "plan": model.plan(width, height, 1, frames)}
    return Job(model=model.name, key=("clip", object()), request=request, images=1, context=context,
               kind="clip")


def clip_size(model: ServedModel, size: str | None, first: FirstFrame | None = None) -> tuple[int, int]:
    """The asked size, checked; without one (or "auto") the model's default, or for image to video its default
    area at the first frame's shape (as `sana video --image` picks it)."""
    from ..pipelines.sizes import first_frame_clip_size

    d = model.defaults
    if size is None or size.strip().lower() == "auto":
        if first is not None:
            return first_frame_clip_size(first.image.size, (d.width, d.height), SIZE_MULTIPLE)
        return d.width, d.height
    match = SIZE_RE.fullmatch(size.strip().lower())
    if not match:
        raise ApiError(400, f"cannot read the size '{size[:40]}': use WxH, e.g. {d.width}x{d.height}", param="size",
                       code="invalid_size")
    width, height = int(match.group(1)), int(match.group(2))
    side = max(d.width, d.height) * MAX_SIDE_FACTOR
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise ApiError(400, f"size {width}x{height}: sides must be multiples of {SIZE_MULTIPLE}", param="size",
                       code="invalid_size")
    if not (SIZE_MULTIPLE <= width <= side and SIZE_MULTIPLE <= height <= side):
        raise ApiError(400, f"size {width}x{height}: sides go from {SIZE_MULTIPLE} to {side} px for {model.name}",
                       param="size", code="invalid_size")
    return width, height


def first_frame(reference: Any) -> FirstFrame | None:
    """`input_reference` decoded: an uploaded file, a base64 data URL (or bare base64), or {"image_url": data URL}."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if reference is None or reference == "":
        return None
    name = "input_reference"
    if isinstance(reference, Upload):
        data, name = reference.data, Path(reference.filename or name).name[:128]
    else:
        if isinstance(reference, dict):
            if reference.get("file_id"):
                raise ApiError(400, "file ids are not kept here: send the image itself", param="input_reference",
                               code="unsupported")
            reference = reference.get("image_url")
        if not isinstance(reference, str):
            raise ApiError(400, "input_reference must be an image file, a base64 data URL or {\"image_url\": ...}",
                           param="input_reference", code="invalid_value")
        match = DATA_URL_RE.fullmatch(reference.strip())
        if match is None and reference.strip().lower().startswith(("http:", "https:", "file:", "data:")):
            raise ApiError(400, "this server fetches no URL: send the image as a base64 data URL or a file",
                           param="input_reference", code="unsupported")
        try:
            data = base64.b64decode(match.group(1) if match else reference, validate=False)
        except (binascii.Error, ValueError):
            raise ApiError(400, "input_reference is not base64", param="input_reference",
                           code="invalid_value") from None
    too_large = (f"too large: a first frame has at most {MAX_IMAGE_PIXELS // 2**20} megapixels "
                 f"({MAX_IMAGE_SIDE}x{MAX_IMAGE_SIDE})")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            if opened.width * opened.height > MAX_IMAGE_PIXELS:
                raise ApiError(400, f"input_reference is {opened.width}x{opened.height}: {too_large}",
                               param="input_reference", code="image_too_large")
            opened.load()
            image = ImageOps.exif_transpose(opened).convert("RGB")  # upright, as it is shown (diffusers' load_image)
    except Image.DecompressionBombError:  # Pillow's own cap, met before the size above can be read
        raise ApiError(400, f"input_reference is {too_large}", param="input_reference",
                       code="image_too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ApiError(400, "input_reference is not an image that can be read (send PNG, JPEG or WebP)",
                       param="input_reference", code="invalid_image") from None
    return FirstFrame(image=image, name=name, sha256=hashlib.sha256(data).hexdigest())


def frame_cap(model: ServedModel) -> int:
    """The most frames a clip of `model` may have: the request cap, and SANA-WM's own (as `sana world`)."""
    from ..camera import MAX_WORLD_FRAMES

    return min(MAX_FRAMES, MAX_WORLD_FRAMES) if model.kind == "world" else MAX_FRAMES


def check_frame_cap(model: ServedModel, body: VideoGenerationRequest, frames: int) -> None:
    """The final frame count (after `seconds` x fps and snapping to what the VAE makes) against the cap."""
    cap = frame_cap(model)
    if frames <= cap:
        return
    if body.seconds is not None:
        asked, param = f"seconds {body.seconds:g} at {body.fps or model.defaults.fps:g} fps", "seconds"
    else:
        asked, param = f"num_frames {body.num_frames}", "num_frames"
    raise ApiError(400, f"{asked} makes {frames} frames (what the VAE makes nearest), more than the {cap} a clip "
                   f"of {model.name} may have", param=param, code="invalid_value")


def _asked_frames(body: VideoGenerationRequest, fps: float) -> int | None:
    if body.num_frames is not None and body.seconds is not None:  # which would win is a guess: ask for one
        raise ApiError(400, "give seconds or num_frames, not both", param="seconds", code="invalid_value")
    if body.num_frames is not None:
        return body.num_frames
    if body.seconds is not None:
        return max(1, round(body.seconds * fps))
    return None


def _video_request(model: ServedModel, body: VideoGenerationRequest, first: FirstFrame | None, width: int,
                   height: int, seed: int, steps: int, guidance: float, shift: float):
    from ..pipelines.sizes import snap_frames
    from ..pipelines.video import VideoRequest

    d: ClipDefaults = model.defaults
    if body.camera is not None or body.actions is not None:
        raise ApiError(400, f"{model.name} is a SANA-Video model: camera paths are for world models",
                       param="camera" if body.camera is not None else "actions", code="invalid_value")
    fps = body.fps or d.fps
    pipe = model.pipeline
    frames = snap_frames(_asked_frames(body, fps) or d.frames, pipe.vae.geometry.temporal)
    check_frame_cap(model, body, frames)
    sampler = body.sampler or (d.i2v_sampler if first else d.sampler)
    if sampler not in VIDEO_SAMPLERS:
        raise ApiError(400, f"unknown sampler '{sampler}' for {model.name}: use {', '.join(VIDEO_SAMPLERS)}",
                       param="sampler", code="invalid_sampler")
    motion = body.motion_score if body.motion_score is not None else d.motion_score
    if body.motion_score is None and re.search(r"motion score:\s*\d+", body.prompt, re.IGNORECASE):
        motion = None  # the prompt has its own, as `sana video` leaves it
    request = VideoRequest(prompt=body.prompt, seeds=[seed], width=width, height=height, frames=frames, steps=steps,
                           guidance=guidance, sampler=sampler, flow_shift=shift,
                           negative_prompt=body.negative_prompt or "", motion_score=motion,
                           image=first.image if first else None)
    # The token grid must fit the DiT's position table.
    cfg = pipe.transformer.config
    try:
        layout = pipe.clip_layout(request)
    except SanaError as exc:
        raise ApiError(400, str(exc), param="size", code="invalid_size") from None
    grid = (layout.latent[1] // cfg.patch_size[0], layout.latent[2] // cfg.patch_size[1],
            layout.latent[3] // cfg.patch_size[2])
    if max(grid) > cfg.rope_max_seq_len:
        raise ApiError(400, f"{frames} frames at {layout.width}x{layout.height} make a {'x'.join(map(str, grid))} "
                       f"token grid, longer than {model.name}'s position table ({cfg.rope_max_seq_len})",
                       param="num_frames", code="invalid_value")
    return request, fps, frames


def _world_request(model: ServedModel, body: VideoGenerationRequest, first: FirstFrame | None, width: int,
                   height: int, seed: int, steps: int, guidance: float, shift: float):
    from ..camera import FRAME_STRIDE, MAX_WORLD_FRAMES, resolve_camera
    from ..pipelines.world import WorldRequest

    d: ClipDefaults = model.defaults
    if first is None:
        raise ApiError(400, f"{model.name} is a world model: send its first frame as input_reference",
                       param="input_reference", code="missing_required_parameter")
    if (body.camera is None) == (body.actions is None):
        raise ApiError(400, "a world-model job takes a camera path: send camera (a camera file's JSON) or actions "
                       "(e.g. \"w-80,jw-40\"), one of them", param="camera", code="invalid_value")
    options = {"intrinsics": body.intrinsics, "fov": body.fov}
    options.update({k: v for k, v in (("pose_scale", body.pose_scale), ("speed", body.speed),
                                      ("turn_rate", body.turn_rate)) if v is not None})
    asked = _asked_frames(body, d.fps)
    if asked is not None and asked > MAX_WORLD_FRAMES:  # as `sana world --frames`
        raise ApiError(400, f"{asked} frames is out of range: SANA-WM makes 1 to {MAX_WORLD_FRAMES} frames",
                       param="num_frames", code="invalid_value")
    with tempfile.TemporaryDirectory(prefix="sana-camera-") as folder:
        source = None
        if body.camera is not None:
            source = Path(folder) / "camera.json"
            source.write_text(json.dumps(body.camera), encoding="utf-8")

        def resolve(num_frames: int | None):
            return resolve_camera(source, actions=body.actions, image_size=first.image.size, num_frames=num_frames,
                                  **options)

        try:
            path = resolve(asked)
            if asked is None and path.num_frames > d.frames:  # as `sana world`: the default, or the whole path
                path = resolve(d.frames)
        except SanaError as exc:
            raise ApiError(400, f"camera path: {exc}", param="camera" if source else "actions",
                           code="invalid_camera") from None
    if source is not None:  # the record names what the client sent, not the server's temporary file
        import dataclasses

        path = dataclasses.replace(path, source="camera (request body)")
    check_frame_cap(model, body, path.num_frames)
    latent = (path.num_frames - 1) // FRAME_STRIDE + 1
    if latent > ROPE_POSITIONS:
        raise ApiError(400, f"{path.num_frames} frames are {latent} latent frames, more than the DiT's position "
                       f"table ({ROPE_POSITIONS})", param="num_frames", code="invalid_value")
    request = WorldRequest(prompt=body.prompt, image=first.image, camera=path, seeds=[seed], steps=steps,
                           guidance=guidance, flow_shift=shift, width=width, height=height,
                           negative_prompt=body.negative_prompt or "")
    return request, path.fps, path.num_frames


# -- the run (worker thread) --------------------------------------------------------------------------------------

def run_clip(model: ServedModel, job: Job, events) -> Path:
    """Generate the job's clip and write it to `job.context["path"]` (MP4 with the record `sana video` /
    `sana world` write; a world clip's camera file beside it). Returns the path."""
    from .. import __version__
    from ..outputs import GenerationRecord, save_video

    request, context = job.request, job.context
    refiner = context.get("refiner")
    result = (model.pipeline.generate(request, events, refiner=refiner) if refiner is not None
              else model.pipeline.generate(request, events))
    first: FirstFrame | None = context["first"]
    extra = {"device": model.device, "generated_size": list(result.generated_size), "served": True}
    plan = context.get("plan")
    if plan is not None:
        ran = {k: v for k, v in (result.memory or {}).items() if k in ("measured peak", "fallbacks")}
        extra["memory"] = {**plan.record(), **ran}
    if first is not None:
        extra.update(image=first.name, image_sha256=first.sha256)
    if model.kind == "world":
        from ..camera.export import camera_record

        camera = request.camera
        camera_extra, camera_text = camera_record(camera, context["path"], frames=result.frames)
        extra.update(camera_extra)
        if refiner is not None:
            extra.update(refiner=refiner.record(request.seeds[0]))
        sampler, fps = "flow-euler", camera.fps
    else:
        extra.update(clips_in_batch=1, motion_score=request.motion_score,
                     mode="image-to-video" if first else "text-to-video")
        sampler, fps = request.sampler, context["fps"]
    record = GenerationRecord(
        prompt=request.prompt, negative_prompt=request.negative_prompt, model=model.name, model_repo=model.repo,
        model_revision=model.revision, family=model.family, seed=request.seeds[0], steps=request.steps,
        guidance=request.guidance, sampler=sampler, flow_shift=request.flow_shift, width=request.width,
        height=request.height, frames=result.frames, fps=fps, dtype=model.dtype, version=__version__,
        timings={k: round(v, 3) for k, v in result.timings.items()}, extra=extra,
    )
    events.on_phase("save")
    path = save_video(result.videos[0].numpy(), context["path"], record, fps=fps, force=True)
    if model.kind == "world":
        from ..camera.export import camera_json_path, write_camera_json

        write_camera_json(request.camera, camera_json_path(path), camera_text)
    return path
