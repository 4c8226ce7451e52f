"""`sana video`: text to video and image to video (`--image`) with SANA-Video, as numbered steps.

Every argument is checked before torch is imported; outputs are planned and the model is resolved before
anything loads, so bad input costs a fraction of a second and leaves no file.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sana.errors import SanaError, UsageError
from sana.registry import ClipDefaults

from . import console
from . import options as opt

MAX_FRAMES = 1024  # a minute at 16 fps; the model's RoPE table and the memory plan bound it further
MAX_FPS = 240.0
SIZE_MULTIPLE = 32  # diffusers' rule for SANA-Video sizes
VIDEO_SAMPLERS = ("flow-dpm", "flow-euler")
MOTION_IN_PROMPT = re.compile(r"motion score:\s*\d+", re.IGNORECASE)  # diffusers' examples write it in the prompt
# Settings a clip takes (flags, --from's record, a prompts file's lines).
VIDEO_KEYS = ("prompt", "negative", "seed", "num", "steps", "cfg", "res", "sampler", "shift", "out", "frames", "fps",
              "motion_score", "image", "format", "crf")


def video(
    prompt: Annotated[Optional[str], typer.Argument(help="What happens in the clip.")] = None,
    image: opt.Image = None,
    model: opt.Model = None,
    res: opt.ClipResolution = None,
    frames: opt.Frames = None,
    fps: opt.Fps = None,
    steps: opt.Steps = None,
    cfg: opt.Cfg = None,
    motion_score: opt.MotionScore = None,
    seed: opt.Seed = None,
    negative: opt.Negative = None,
    sampler: opt.Sampler = None,
    shift: opt.Shift = None,
    out: opt.ClipOut = None,
    fmt: opt.ClipFormat = None,
    crf: opt.Crf = None,
    num: opt.Num = None,
    prompts: opt.Prompts = None,
    device: opt.Device = "auto",
    dtype: opt.Dtype = "auto",
    vae_dtype: opt.VaeDtype = "auto",
    fp8: opt.Fp8 = False,
    lora: opt.Lora = None,
    memory: opt.Memory = "auto",
    max_vram: opt.MaxVram = None,
    dry_run: opt.DryRun = False,
    from_file: opt.FromFile = None,
    force: opt.Force = False,
    skip_existing: opt.SkipExisting = False,
    as_json: opt.Json = False,
    gpus: opt.Gpus = 1,
    server: opt.Server = None,
    api_key: opt.ApiKey = None,
) -> None:
    """Generate video clips from a prompt, or from a prompt and a first frame (--image); here, or on a running
    `sana serve` with --server URL."""
    flags = dict(locals())
    flags["from"] = flags.pop("from_file")
    flags["format"] = flags.pop("fmt")
    console.settings.json = as_json
    run(flags)


# -- checks (no torch) ----------------------------------------------------------------------------------------

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
    if settings.get("cfg") is not None and float(settings["cfg"]) < 0:
        raise UsageError("--cfg must be >= 0")
    if settings.get("shift") is not None and float(settings["shift"]) <= 0:
        raise UsageError("--shift must be > 0")


@dataclass(frozen=True)
class FirstFrame:
    image: Any  # PIL image, decoded
    path: Path
    sha256: str


def open_first_frame(path_text: str, recorded_sha256: str | None = None, recorded_in: str | None = None
                     ) -> FirstFrame:
    """--image: the file decoded now (a missing, unreadable or broken image fails before anything loads).
    `recorded_in`: the clip whose record named the file (--from), so an error says where the path came from."""
    from PIL import Image, UnidentifiedImageError

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
            image = opened.convert("RGB")
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


# -- defaults and requests --------------------------------------------------------------------------------------

ARCHITECTURE_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "sample_size",
                     "patch_size")


def matching_clip_preset(transformer_config: dict):
    """The video preset whose DiT has this folder's architecture (a fine-tune or a retrained nano-video keeps its
    model's clip size and rate), or None."""
    from sana.registry import all_specs

    def key(config: dict) -> tuple:
        return tuple(list(v) if isinstance(v, (list, tuple)) else v for v in map(config.get, ARCHITECTURE_KEYS))

    found = [s for s in all_specs() if s.family == "video" and key(s.transformer) == key(transformer_config)]
    return found[0] if found else None


def clip_defaults(spec, scheduler: dict, transformer_config: dict, model_dir: Path | None = None) -> ClipDefaults:
    """The preset's defaults (a local folder: the preset of its architecture, else the released preset of its size
    class, under the settings the folder carries, as an exported fine-tune does), with the model's own scheduler
    file winning for the flow shift (DPM-Solver's `flow_shift`, flow Euler's `shift`)."""
    from sana.components import folder_sampling_defaults
    from sana.registry import get_spec

    carried = folder_sampling_defaults(model_dir) if spec is None and model_dir is not None else {}
    if spec is None:
        spec = matching_clip_preset(transformer_config)
    if spec is None:
        spec = get_spec("video-2b-720p" if transformer_config.get("sample_size") == 22 else "video-2b-480p")
    d = {**spec.defaults, **carried}
    shift = {"DPMSolverMultistepScheduler": scheduler.get("flow_shift"),
             "FlowMatchEulerDiscreteScheduler": scheduler.get("shift")}.get(scheduler.get("_class_name"))
    return ClipDefaults(
        steps=int(d["steps"]), cfg=float(d["guidance"]), sampler=d["sampler"], i2v_sampler=d["i2v_sampler"],
        shift=float(shift or d["flow_shift"]), frames=int(d["frames"]), fps=float(d["fps"]),
        motion_score=d.get("motion_score"), width=int(d["width"]), height=int(d["height"]),
    )


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
    asked = check_frames(settings.get("frames")) or defaults.frames
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


def _model_configs(resolved, spec) -> tuple[dict, dict]:
    """(transformer config, VAE config) from the model folder, else the preset."""
    from sana.components import read_json
    from sana.hub import transformer_config

    if resolved is not None:
        return transformer_config(resolved.path), read_json(resolved.path / "vae" / "config.json")
    return spec.transformer, spec.extra.get("vae", {})


def job_format(paths: list[Path], settings: dict[str, Any], fmt: str | None) -> str:
    """The clip format a job writes: its planned paths' (a dry run plans none: --format, else -o's suffix, else
    MP4, as `plan_clip_paths` decides)."""
    from sana.outputs import clip_format

    if paths:
        return clip_format(paths[0])
    out = settings.get("out")
    if fmt is None and out and Path(out).suffix:
        try:
            return clip_format(out)
        except UsageError:
            pass
    return fmt or "mp4"


FORMAT_NAMES = {"mp4": "MP4", "gif": "GIF", "webp": "WebP", "png": "PNG frames"}


def writable_fps(fps: float, fmt: str, notices: set[str]) -> float:
    """The rate a clip is written (and recorded) at: a GIF is capped at the 50 fps it can play, with a notice."""
    from sana.outputs.video import GIF_MAX_FPS, playable_fps

    written = playable_fps(fmt, fps)
    if written != fps:
        once(notices, f"a GIF cannot play faster than {GIF_MAX_FPS:g} fps (its frame delays are whole 1/100 s and "
                      f"browsers slow delays under 20 ms): {fps:g} fps is written and recorded as {written:g} fps "
                      f"(write .mp4 or .webp for more)")
    return written


def once(notices: set[str], message: str) -> None:
    """A notice printed once a run (a prompts file's jobs would repeat it)."""
    if message not in notices:
        notices.add(message)
        console.notice(message)


def note_untrained_lengths(spec, frame_counts: list[int]) -> None:
    """A model trained at one clip length (its preset's `trained_frames`: nano-video's 17) draws other lengths
    poorly: a notice, since the clip comes out without any error."""
    trained = spec.extra.get("trained_frames") if spec is not None else None
    if not trained:
        return
    other = sorted(set(frame_counts) - {int(trained)})
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


# -- the run ----------------------------------------------------------------------------------------------------

def run(flags: dict[str, Any]) -> None:
    from sana.outputs import CLIP_FORMATS, plan_clip_paths
    from sana.pipelines.sizes import video_binned_size, video_vae_geometry

    from .generation import (DTYPE_CHOICES, check_output_dirs, default_model, plan_jobs, read_jobs, replay_settings,
                             resolve_for)
    from .launch import check_gpus, process_device, share_of_plan, spread_jobs

    # 1. Settings from --from, the command line and the prompts file, every value checked (before torch loads).
    replay = {k: v for k, v in replay_settings(flags.get("from"), "video").items()
              if k in (*VIDEO_KEYS, "model", "image_sha256", "lora")}
    if replay.get("image"):  # a relative first frame (older records) is found beside the replayed clip
        replay["image"] = recorded_first_frame(replay["image"], flags["from"])
    explicit = {k: flags.get(k) for k in VIDEO_KEYS}
    dry_run, force = bool(flags.get("dry_run")), bool(flags.get("force"))
    skip_existing = bool(flags.get("skip_existing"))
    if force and skip_existing:
        raise UsageError("--force and --skip-existing contradict each other", "give one of them")
    for flag, value in (("--dtype", flags.get("dtype")), ("--vae-dtype", flags.get("vae_dtype"))):
        if (value or "auto") not in DTYPE_CHOICES:
            raise UsageError(f"unknown {flag} '{value}'", f"use {', '.join(DTYPE_CHOICES)}")
    gpus = int(flags.get("gpus") or 1)
    check_gpus(gpus, flags, noun="clips")
    from .gen import check_fp8_early

    check_fp8_early(flags)
    if flags.get("server"):
        from .remote import refuse_local_flags

        refuse_local_flags(flags)
        if flags.get("lora"):
            raise UsageError("--lora with --server: the server's clip jobs take no LoRAs yet", "drop --server")
    from sana.lora import parse_lora_arg

    loras = [] if flags.get("server") else [parse_lora_arg(text) for text in flags.get("lora") or replay.get("lora") or []]
    jobs = read_jobs(flags, replay, "video", noun="CLIP")
    for _, overrides in jobs:
        foreign = sorted(set(overrides) - set(VIDEO_KEYS))
        if foreign:
            raise UsageError(f"the prompts file sets {', '.join(foreign)}, which clips do not take")
    fmt = explicit.get("format")
    if fmt is not None and fmt not in CLIP_FORMATS:
        raise UsageError(f"unknown --format '{fmt}'", f"use {', '.join(CLIP_FORMATS)}")
    crf = explicit.get("crf")
    if crf is not None and not 0 <= crf <= 51:
        raise UsageError(f"--crf {crf} is out of range", "use 0 (lossless) to 51")
    asked_crf = crf is not None  # a replayed one encodes alike, without notices where it does not apply
    if crf is None and replay.get("crf") is not None:
        crf = int(replay["crf"])
    firsts: dict[str, FirstFrame] = {}  # each first frame read (and checked) once, before anything loads

    def first_frame(settings: dict[str, Any]) -> FirstFrame | None:
        """The job's first frame: a prompts-file line's "image", else --image, else --from's (its sha256 checked)."""
        image_arg = settings.get("image")
        if not image_arg:
            return None
        if str(image_arg) not in firsts:
            replayed = not explicit.get("image") and image_arg == replay.get("image")
            firsts[str(image_arg)] = open_first_frame(str(image_arg), replay.get("image_sha256") if replayed else None,
                                                      str(flags["from"]) if replayed else None)
        return firsts[str(image_arg)]

    def plan_paths(out: str | None, prompt: str, seeds: list[int], index_start: int, taken: set[Path]) -> list[Path]:
        return plan_clip_paths(out, prompt=prompt, seeds=seeds, fmt=fmt, force=force or skip_existing,
                               index_start=index_start, taken=taken)

    planned_jobs = share_of_plan()  # one of --gpus N's processes: the parent planned the outputs
    if planned_jobs is None:
        planned_jobs = plan_jobs(jobs, replay, explicit, dry_run=dry_run, check=check_settings,
                                 plan_paths=plan_paths, noun="clips", skip_existing=skip_existing)
        check_output_dirs([path for *_, paths in planned_jobs for path in paths])  # a real try: /proc fails here
        if not planned_jobs:
            console.info("nothing to make: every output exists")
            return
    job_firsts = [first_frame(settings) for _, settings, _, _ in planned_jobs]
    formats = [job_format(paths, settings, fmt) for _, settings, _, paths in planned_jobs]
    notices: set[str] = set()
    if asked_crf and set(formats) - {"mp4"}:
        once(notices, "--crf sets the MP4 quality; "
                      + ", ".join(sorted({FORMAT_NAMES[f] for f in formats if f != "mp4"})) + " output ignores it")
    if not dry_run and ("mp4" in formats if not flags.get("server") else set(formats) - {"mp4"}):
        from sana.outputs.video import ffmpeg_exe

        ffmpeg_exe()  # writing an MP4 (or decoding a server's) needs it: say so now, not after the work
    if flags.get("server"):  # sent to a running `sana serve` as /v1/videos jobs; the clips written here (no torch)
        from .remote import generate_clips

        if asked_crf and "mp4" in formats:
            once(notices, "--crf is not sent to a server: it encodes its MP4 at its own quality")
        try:
            generate_clips(flags, planned_jobs, job_firsts, flags.get("model") or replay.get("model"), force)
        except KeyboardInterrupt:
            from sana.errors import Interrupted

            raise Interrupted("interrupted: the clips printed above are saved",
                              "--skip-existing makes the rest") from None
        return

    # 2. The model: resolved (no download; a dry run plans from the registry alone), a SANA-Video model, its
    #    VAE's frame rule and the defaults of its preset.
    model_arg = flags.get("model") or replay.get("model") or default_model("video", planning=dry_run)
    resolved, spec, _ = resolve_for("video", model_arg, dry_run=dry_run)
    t_config, vae_config = _model_configs(resolved, spec)
    try:
        vae = video_vae_geometry(vae_config)
    except ValueError as exc:
        raise SanaError(f"{model_arg}: {exc}") from None
    from sana.components import scheduler_config
    from sana.memory import check_mode, parse_memory_size

    memory_mode = check_mode(flags.get("memory") or "auto")
    max_vram = parse_memory_size(flags["max_vram"]) if flags.get("max_vram") else None
    defaults = clip_defaults(spec, scheduler_config(resolved.path) if resolved else {}, t_config,
                             resolved.path if resolved else None)
    if gpus > 1 and not dry_run and spread_jobs(planned_jobs, gpus, noun="clips", device=flags.get("device")):
        return  # --gpus N: the processes made the clips

    # 3. Requests: sizes, frame counts snapped to the VAE's rule, sampler, shift, motion score, first frame, the
    #    rate each format can play; notices for what the model was not trained on.
    from sana.pipelines.video import VideoPipeline, VideoRequest

    requests = []
    for (prompt, settings, seeds, paths), first, job_fmt in zip(planned_jobs, job_firsts, formats):
        request = build_request(prompt, settings, seeds, defaults, vae, t_config, first, VideoRequest)
        fps = writable_fps(check_fps(settings.get("fps")) or defaults.fps, job_fmt, notices)
        requests.append((request, paths, fps, first))
    note_untrained_lengths(spec, [r.frames for r, _, _, _ in requests])
    note_outside_grammar(spec, [r.prompt for r, _, _, _ in requests])
    sample_size = int(t_config.get("sample_size", 0))

    # 4. Device, precision and the memory plan (a dry run prints the clips and the plan, and stops here).
    from .generation import component_sizes, plan_table, quiet_libraries, weights_variant

    quiet_libraries()
    from sana.device import DTYPE_NAMES, DTYPES, limit_process_memory, pick_device, probe_device
    from sana.memory import Workload, plan_memory

    sizes = component_sizes(resolved, spec, None)
    fp8 = bool(flags.get("fp8"))
    if fp8:
        from sana.memory import with_fp8_blocks

        sizes = with_fp8_blocks(sizes, t_config)
    generated = [video_binned_size(r.width, r.height, sample_size) for r, _, _, _ in requests]
    work = Workload(*max(generated, key=lambda wh: wh[0] * wh[1]), images=max(len(r.seeds) for r, _, _, _ in requests),
                    rows=max(len(r.seeds) * (1 + (r.guidance > 1.0)) for r, _, _, _ in requests),
                    frames=max(r.frames for r, _, _, _ in requests),
                    conditioned=any(first is not None for first in job_firsts))
    device = process_device(pick_device(flags.get("device") or "auto"))  # --gpus N: this process's GPU
    info = probe_device(device)
    plan = plan_memory(info, sizes, work, mode=memory_mode, max_vram=max_vram, dtype=flags.get("dtype") or "auto",
                       vae_dtype=flags.get("vae_dtype") or "auto")
    if max_vram is not None and not info.is_accelerator:
        console.notice("--max-vram caps GPU memory; this run uses the CPU, so it has no effect")
    if fp8:
        from .gen import check_fp8

        check_fp8(device, plan.dtype)
    if dry_run:
        print_dry_run(model_arg, requests, generated, formats, plan)
        return
    if max_vram is not None:
        limit_process_memory(device, max_vram)
    dtype = DTYPES[plan.dtype]

    # 5. Load where the plan keeps each component; 6. one generation a prompt (all its seeds in one batch), each
    #    clip saved with its record. Ctrl-C says what was kept.
    from sana.errors import Interrupted

    saved: list[Path] = []
    total = sum(len(paths) for _, paths, _, _ in requests)
    try:
        console.info(f"loading {model_arg} ({DTYPE_NAMES[dtype]}{', fp8 block linears' if fp8 else ''} on {device})")
        console.info(plan.headline())
        start = time.perf_counter()
        pipe = VideoPipeline.from_pretrained(resolved.path, dtype=dtype, device=device,
                                             variant=weights_variant(spec, plan), plan=plan, loras=loras, fp8=fp8)
        load_seconds = time.perf_counter() - start
        for path, scale in loras:
            console.info(f"LoRA applied: {path} (scale {scale:g})")
        from .generation import note_cut_prompts

        note_cut_prompts(pipe.text_encoder, [request.prompt for request, _, _, _ in requests])
        for request, paths, fps, first in requests:
            _generate_and_save(pipe, request, paths, fps, flags, model_arg, resolved, dtype, device, first,
                               load_seconds, crf, loras, saved)
    except KeyboardInterrupt:
        last = f"; the last is {saved[-1]}" if saved else ""
        raise Interrupted(f"interrupted: {len(saved)} of {total} clips saved{last}",
                          "--skip-existing makes the rest" if total > 1 else None) from None


def print_dry_run(model_arg: str, requests: list, generated: list[tuple[int, int]], formats: list[str], plan) -> None:
    """The clips a run would make and its memory plan: lines and the plan's table, or with --json one JSON object."""
    if console.settings.json:
        clips = [{"prompt": request.prompt, "seeds": list(request.seeds), "frames": request.frames, "fps": fps,
                  "seconds": round(request.frames / fps, 3), "width": request.width, "height": request.height,
                  "generated_size": list(size), "format": fmt, "steps": request.steps, "cfg": request.guidance,
                  "sampler": request.sampler, "flow_shift": request.flow_shift, "motion_score": request.motion_score,
                  "mode": "image-to-video" if first else "text-to-video"}
                 for (request, _, fps, first), size, fmt in zip(requests, generated, formats)]
        from .generation import plan_json

        console.json_line({"dry_run": True, "model": model_arg, "clips": clips, "memory": plan_json(plan)})
        return
    for (request, _, fps, _), (gen_w, gen_h) in zip(requests, generated):
        console.out.print(f"{len(request.seeds)} clip(s) of {request.frames} frames at {fps:g} fps "
                          f"({request.frames / fps:.2f} s), {request.width}x{request.height} "
                          f"(generated at {gen_w}x{gen_h}): {request.prompt}", highlight=False, markup=False)
    from .generation import plan_table

    console.table(plan_table(plan, model_arg))


def _generate_and_save(pipe, request, paths: list[Path], fps: float, flags: dict, model_arg: str, resolved, dtype,
                       device, first: FirstFrame | None, load_seconds: float, crf: int | None,
                       loras: list[tuple[Path, float]], saved: list[Path]) -> None:
    """One request's clips made in one batch, each saved (a failed save keeps it in the temp folder) and appended
    to `saved`."""
    from sana import __version__
    from sana.device import DTYPE_NAMES
    from sana.outputs import GenerationRecord, file_sha256, save_video

    from .generation import generate_with_progress, print_written

    result = generate_with_progress(pipe, request)
    timings = {"load": round(load_seconds, 3), **{k: round(v, 3) for k, v in result.timings.items()}}
    failures: list[SanaError] = []
    for frames, seed, path in zip(result.videos, request.seeds, paths):
        extra = {"device": str(device), "vae_dtype": DTYPE_NAMES[pipe.vae.dtype],
                 **({"fp8": "block linears, e4m3 rowwise"} if flags.get("fp8") else {}),
                 "generated_size": list(result.generated_size),
                 "clips_in_batch": len(request.seeds), "memory": result.memory,
                 "motion_score": request.motion_score,
                 "mode": "image-to-video" if first else "text-to-video"}
        if first:  # absolute, so --from finds it from any folder; the hash says whether it is still the same file
            extra.update(image=str(first.path.resolve()), image_sha256=first.sha256)
        record = GenerationRecord(
            prompt=request.prompt, negative_prompt=request.negative_prompt, model=model_arg,
            model_repo=resolved.repo, model_revision=resolved.revision, family="video", seed=seed,
            steps=request.steps, guidance=request.guidance, sampler=request.sampler, flow_shift=request.flow_shift,
            width=request.width, height=request.height, frames=result.frames, fps=fps, dtype=DTYPE_NAMES[dtype],
            version=__version__, timings=timings, extra=extra,
            loras=[{"path": str(p), "scale": s, "sha256": file_sha256(p)} for p, s in loras],
        )
        array = frames.numpy()
        start = time.perf_counter()
        try:
            written = save_or_keep_clip(
                lambda target, temp, array=array, record=record: save_video(
                    array, target, record, fps=fps, force=bool(flags.get("force")) or temp, crf=crf), path)
        except SanaError as exc:  # the batch's other clips are still saved (or kept) before the run stops
            failures.append(exc)
            continue
        finally:
            result.timings["save"] = result.timings.get("save", 0.0) + time.perf_counter() - start
        saved.append(written)
        print_written(written, record)
    if failures:
        if len(failures) == 1:
            raise failures[0]
        more = (f"{len(failures) - 1} more clip(s) of the batch failed too, kept in {tempfile.gettempdir()} where "
                "they could be")
        raise SanaError(failures[0].message, f"{failures[0].hint}; {more}" if failures[0].hint else more)
    t = result.timings
    phases = " | ".join(f"{name} {seconds:.2f}s" for name, seconds in t.items())
    console.info(f"load {load_seconds:.2f}s | {phases}")


def unsaved_path(path: Path) -> Path:
    """Where a clip that could not be saved at `path` is kept: the system temp folder, under a name of this run."""
    return Path(tempfile.gettempdir()) / f"sana-unsaved-{os.getpid()}-{Path(path).name}"


def save_or_keep_clip(save, path: Path) -> Path:
    """`save(target, temp)` at `path`; when the clip cannot be written there (a full disk, a folder gone, ffmpeg
    failing) it is written in the system temp folder instead (a file that fails there too, as PNG frames, which
    need no encoder) and the one-line error says where: minutes of generation are never lost to a failed save."""
    from sana.outputs import clip_format

    try:
        return save(path, False)
    except UsageError:  # a bad argument fails the same anywhere
        raise
    except (OSError, SanaError) as exc:
        reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    kept = unsaved_path(path)
    # PNG frames need no encoder: the last resort of a file format (a folder name without dots, so no suffix)
    targets = [kept] if clip_format(path) == "png" else [kept, kept.with_name(kept.name.replace(".", "-"))]
    for target in targets:
        try:
            save(target, True)
        except (OSError, SanaError):
            continue
        how = " as PNG frames" if target != kept else ""
        raise SanaError(f"could not save {path}: {reason}", f"it is kept{how} at {target}")
    raise SanaError(f"could not save {path}: {reason}", f"and it could not be kept in {kept.parent} either")


def write_served_clip(path: Path, data: bytes, force: bool) -> Path:
    """A server's MP4 (its record embedded) written at `path`: as it came for .mp4, else its frames decoded and
    written through the same writer in the format asked for (the record's rate capped as a GIF needs). A failed
    save keeps the clip in the temp folder, as a local run does."""
    from sana.outputs import clip_format

    if clip_format(path) == "mp4":
        def save(target: Path, temp: bool) -> Path:
            from sana.outputs.atomic import atomic_file

            with atomic_file(target, force=force or temp) as file:
                file.write_bytes(data)
            return target

        return save_or_keep_clip(save, path)

    import dataclasses

    from sana.outputs import read_clip, read_metadata, save_video
    from sana.outputs.video import playable_fps

    try:
        with tempfile.TemporaryDirectory(prefix="sana-served-") as folder:  # ffmpeg reads files, not bytes
            mp4 = Path(folder) / "clip.mp4"
            mp4.write_bytes(data)
            record = read_metadata(mp4)
            frames, stream_fps = read_clip(mp4)
    except OSError as exc:
        raise SanaError(f"could not decode the server's clip for {path}: {exc.strerror or exc}",
                        "write it as .mp4, which needs no decoding") from None
    fps = record.fps or stream_fps
    if record.width and record.height:  # an odd side was padded for yuv420p
        frames = frames[:, :record.height, :record.width]
    written_fps = playable_fps(path, fps)
    if written_fps != fps:
        console.notice(f"a GIF cannot play faster than {written_fps:g} fps: the server's {fps:g} fps clip is written "
                       f"and recorded as {written_fps:g} fps")
    if clip_format(path) == "png":
        console.notice("a server sends H.264 MP4: the PNG frames are decoded from it, not lossless")
    record = dataclasses.replace(record, fps=written_fps, frames=len(frames))
    return save_or_keep_clip(lambda target, temp: save_video(frames, target, record, fps=written_fps,
                                                             force=force or temp), path)
