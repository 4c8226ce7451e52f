"""A clip's settings for `sana video` (and the first frame `sana world` shares): every value checked before torch
is imported, the first frame decoded up front, and the request built from the settings over the model's defaults."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sana.errors import SanaError, UsageError
from sana.registry import ClipDefaults

from . import console

MAX_FRAMES = 1024  # a minute at 16 fps; the model's RoPE table and the memory plan bound it further


MAX_FPS = 240.0


SIZE_MULTIPLE = 32  # diffusers' rule for SANA-Video sizes


VIDEO_SAMPLERS = ("flow-dpm", "flow-euler")


MOTION_IN_PROMPT = re.compile(r"motion score:\s*\d+", re.IGNORECASE)  # diffusers' examples write it in the prompt
# Settings a clip takes (flags, --from's record, a prompts file's lines).


VIDEO_KEYS = ("prompt", "negative", "seed", "num", "steps", "cfg", "res", "sampler", "shift", "out", "frames", "fps",
              "motion_score", "image", "format", "crf")


def check_frames(value: Any) -> int | None:
    if value is None:
        return None
    if not 1 <= int(value) <= MAX_FRAMES:
        raise UsageError(f"--frames {value} is out of range", f"a clip has 1 to {MAX_FRAMES} frames")
    return int(value)


def check_fps(value: Any) -> float | None:
    if value is None:
        return None
    if not 0 < float(value) <= MAX_FPS:
        raise UsageError(f"--fps {value} is out of range", f"use a frame rate above 0 and at most {MAX_FPS:g}")
    return float(value)


def parse_motion_score(value: Any, default: int | None = None) -> int | None:
    """"none" -> None (nothing appended); a whole number >= 0; not set -> `default`."""
    if value is None:
        return default
    text = str(value).strip().lower()
    if text == "none":
        return None
    if not text.isdigit():
        what = "is below 0" if text.startswith("-") and text[1:].isdigit() else "is not a whole number"
        raise UsageError(f"--motion-score {value} {what}", "use e.g. 30, or none to append nothing")
    return int(text)


def check_clip_size(res: Any) -> tuple[int, int] | None:
    from .generation import CLIP_NAMED_SIZES, parse_resolution

    size = parse_resolution(res, CLIP_NAMED_SIZES)
    if size is not None and (size[0] % SIZE_MULTIPLE or size[1] % SIZE_MULTIPLE):
        raise UsageError(f"size {size[0]}x{size[1]} is not a multiple of {SIZE_MULTIPLE}",
                         f"SANA-Video sizes are multiples of {SIZE_MULTIPLE}, e.g. 832x480")
    return size


def check_settings(settings: dict[str, Any]) -> None:
    """Every value of one job's settings, before anything loads."""
    check_frames(settings.get("frames"))
    check_fps(settings.get("fps"))
    check_clip_size(settings.get("res"))
    parse_motion_score(settings.get("motion_score"))
    if settings.get("sampler") and settings["sampler"] not in VIDEO_SAMPLERS:
        raise UsageError(f"unknown sampler '{settings['sampler']}' for a video model",
                         f"use {' or '.join(VIDEO_SAMPLERS)}")
    if settings.get("cfg") is not None and not (math.isfinite(float(settings["cfg"])) and float(settings["cfg"]) >= 0):
        raise UsageError(f"--cfg {float(settings['cfg']):g} must be a finite number >= 0")
    if settings.get("shift") is not None and not (math.isfinite(float(settings["shift"])) and float(settings["shift"]) > 0):
        raise UsageError(f"--shift {float(settings['shift']):g} must be a finite number > 0")


@dataclass(frozen=True)
class FirstFrame:
    image: Any  # PIL image, decoded
    path: Path
    sha256: str


def open_first_frame(path_text: str, recorded_sha256: str | None = None, recorded_in: str | None = None
                     ) -> FirstFrame:
    """--image: the file decoded now (a missing, unreadable or broken image fails before anything loads).
    `recorded_in`: the clip whose record named the file (--from), so an error says where the path came from."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from sana.outputs import file_sha256

    path = Path(path_text).expanduser()
    what = f"--image {path_text}" + (f" (from the record of {recorded_in})" if recorded_in else "")
    hint = "pass --image FILE to give the first frame" if recorded_in else None
    if not path.exists():
        raise UsageError(f"{what} not found", hint)
    if not path.is_file():
        raise UsageError(f"{what} is not a file", hint)
    try:
        with Image.open(path) as opened:
            opened.load()  # decodes every pixel: a truncated or corrupt file fails here
            image = ImageOps.exif_transpose(opened).convert("RGB")  # upright, as shown (diffusers' load_image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise UsageError(f"{what} is not an image that can be read",
                         hint or "give a PNG, JPEG or WebP file") from None
    digest = file_sha256(path)
    if recorded_sha256 and digest != recorded_sha256:
        console.notice(f"{path_text} is not the first frame the replayed clip recorded (its sha256 differs)")
    return FirstFrame(image, path, digest)


def recorded_first_frame(recorded: str, clip: str) -> str:
    """The first frame a replayed clip's record names: an absolute path as recorded; a relative one (records
    made before paths were stored absolute) beside the clip if it is there, else as recorded (from here)."""
    path = Path(recorded).expanduser()
    if path.is_absolute():
        return recorded
    beside = Path(clip).expanduser().absolute().parent / path
    return str(beside) if beside.exists() else recorded


def asked_frames(settings: dict[str, Any], defaults: ClipDefaults) -> int:
    """The frame count a job asks for (--frames, else the model's default), before the VAE's rule snaps it."""
    return check_frames(settings.get("frames")) or defaults.frames


def build_request(prompt: str, settings: dict[str, Any], seeds: list[int], defaults: ClipDefaults, vae,
                  transformer_config: dict, first: FirstFrame | None, request_type):
    """A VideoRequest from one job's settings over the defaults; the frame count snapped with a notice."""
    from sana.pipelines.sizes import latent_frames, snap_frames, video_binned_size

    from .generation import CLIP_NAMED_SIZES

    res = settings.get("res")
    named = isinstance(res, str) and res.strip().lower() in CLIP_NAMED_SIZES
    if named and first is not None:  # "480p" with a first frame: that size class at the frame's shape
        from sana.pipelines.sizes import first_frame_clip_size

        width, height = first_frame_clip_size(first.image.size, CLIP_NAMED_SIZES[res.strip().lower()], SIZE_MULTIPLE)
    else:
        width, height = clip_size_for(check_clip_size(res), defaults, first)
    asked = asked_frames(settings, defaults)
    frames = snap_frames(asked, vae.temporal)
    if frames != asked:
        console.notice(f"{asked} frames snapped to {frames} (the {vae.label} VAE makes {vae.temporal}k+1 frames)")
    gen_w, gen_h = video_binned_size(width, height, int(transformer_config.get("sample_size", 0)))
    patch = transformer_config.get("patch_size") or (1, 2, 2)
    grid = (latent_frames(frames, vae.temporal) // patch[0], gen_h // vae.spatial // patch[1],
            gen_w // vae.spatial // patch[2])
    rope = int(transformer_config.get("rope_max_seq_len", 1024))
    if max(grid) > rope:
        raise UsageError(f"{frames} frames at {gen_w}x{gen_h} make a {'x'.join(map(str, grid))} token grid, "
                         f"longer than this model's position table ({rope})", "use fewer --frames or a smaller --res")
    sampler = settings.get("sampler") or (defaults.i2v_sampler if first else defaults.sampler)
    cfg = float(settings["cfg"]) if settings.get("cfg") is not None else defaults.cfg
    motion = parse_motion_score(settings.get("motion_score"), defaults.motion_score)
    if settings.get("motion_score") is None and motion is not None and MOTION_IN_PROMPT.search(prompt):
        console.notice("the prompt has its own motion score, so none is appended (--motion-score N appends one)")
        motion = None
    return request_type(
        prompt=prompt, seeds=seeds, width=width, height=height, frames=frames,
        steps=int(settings.get("steps") or defaults.steps), guidance=cfg, sampler=sampler,
        flow_shift=float(settings.get("shift") or defaults.shift), negative_prompt=settings.get("negative") or "",
        motion_score=motion, image=first.image if first else None,
    )


STRETCH_NOTICE = 1.05  # a first frame more than 5% off the clip's shape is visibly stretched


def clip_size_for(asked: tuple[int, int] | None, defaults: ClipDefaults,
                  first: FirstFrame | None) -> tuple[int, int]:
    """--res, else (image to video) the default area at the first frame's shape, else the default size; a notice
    where the first frame is resized to another shape (diffusers' pipeline resizes without cropping)."""
    from sana.pipelines.sizes import first_frame_clip_size, stretch_ratio

    if first is None:
        return asked or (defaults.width, defaults.height)
    image_size = first.image.size
    size = asked or first_frame_clip_size(image_size, (defaults.width, defaults.height), SIZE_MULTIPLE)
    if asked is None and size != (defaults.width, defaults.height):
        console.notice(f"clips of {size[0]}x{size[1]}, the shape of the {image_size[0]}x{image_size[1]} first "
                       f"frame (--res sets the size)")
    if stretch_ratio(image_size, size) > STRETCH_NOTICE:
        console.notice(f"the {image_size[0]}x{image_size[1]} first frame is stretched to {size[0]}x{size[1]}, "
                       f"as diffusers' pipeline does (crop it to that shape to keep its proportions)")
    return size


def note_untrained_lengths(spec, lengths: list[tuple[int, int]]) -> None:
    """A model trained at one clip length (its preset's `trained_frames`: nano-video's 17) draws other lengths
    poorly: a notice, since the clip comes out without any error. `lengths`: (asked, made) per job; the notice
    names the counts asked, as the snapping notice does (2 asked, not the 1 frame it snapped to)."""
    trained = spec.extra.get("trained_frames") if spec is not None else None
    if not trained:
        return
    other = sorted({asked for asked, made in lengths if made != int(trained)})
    if other:
        console.notice(f"{spec.name} was trained on {trained}-frame clips only; other lengths draw poorly "
                       f"({', '.join(map(str, other))} asked; --frames {trained} matches)")


def note_outside_grammar(spec, prompts: list[str]) -> None:
    """A model trained on a caption grammar alone (its preset's `prompt_grammar`: nano-video's moving shapes): a
    prompt outside it gets a notice naming the rule it breaks, as `sana gen` does for the nano model."""
    if spec is None or spec.extra.get("prompt_grammar") != "moving-shapes":
        return
    from sana.nano.moving_shapes import parse_motion_caption

    for prompt in dict.fromkeys(prompts):
        try:
            parse_motion_caption(prompt)
        except SanaError as exc:
            console.notice(f"{spec.name} knows only the moving-shapes grammar, and {exc}; see "
                           "`sana shapes make --help`")
