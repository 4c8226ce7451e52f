"""`sana world`: a first frame explored along a camera path with SANA-WM (stage 1, and with --refine its LTX-2
refiner, stage 2), as numbered steps.

Every argument is checked before torch is imported: the first frame is decoded, the camera path resolved (numpy
only) and the outputs planned before the model is even resolved, so bad input costs a fraction of a second, is
reported before a missing model, and leaves no file. `--preview` draws the resolved path and `--dry-run` prints
the clip, the path and the memory plan; neither loads a model. Each clip is written with `<clip>.camera.json`
beside it (the resolved path in nerfstudio's format and in sana's schema); `--from clip` replays from that file,
so the poses are the same.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand

from sana.camera.path import MAX_WORLD_FRAMES
from sana.errors import SanaError, UsageError

from . import console
from . import options as opt

WORLD_MODEL = "wm-2.6b"  # the released preset; a local folder without one takes its defaults
SIZE_MULTIPLE = 32  # the LTX-2 VAE's pixels a latent
ROPE_POSITIONS = 1024  # the DiT's rotary table: latent frames (and rows, columns) it can place
MAX_FRAMES = MAX_WORLD_FRAMES
# Settings a clip takes from the flags and --from's record (the camera is replayed from the record's path file).
WORLD_KEYS = ("prompt", "negative", "seed", "num", "steps", "cfg", "res", "shift", "out", "frames", "image",
              "format", "crf")


class WorldCommand(TyperCommand):
    """`sana world`'s command: its epilog (the camera kinds and the action table) is read only when help is shown,
    so other commands never import the camera package (and numpy) just to register this one."""

    @property
    def epilog(self) -> str:
        from sana.camera import ACTION_HELP, KINDS_HELP

        return f"Camera files (--camera): {KINDS_HELP}.\n\n{ACTION_HELP}"

    @epilog.setter
    def epilog(self, value) -> None:  # click sets it in __init__; the property above is the text
        pass


def world(
    prompt: Annotated[Optional[str], typer.Argument(help="What the world looks like and what happens in it.")] = None,
    image: opt.WorldImage = None,
    camera: opt.Camera = None,
    actions: opt.Actions = None,
    intrinsics: opt.Intrinsics = None,
    fov: opt.Fov = None,
    frames: opt.WorldFrames = None,
    pose_scale: opt.PoseScale = None,
    speed: opt.Speed = None,
    turn_rate: opt.TurnRate = None,
    camera_fps: opt.CameraFps = None,
    model: opt.Model = None,
    res: opt.WorldSize = None,
    steps: opt.Steps = None,
    cfg: opt.Cfg = None,
    seed: opt.Seed = None,
    negative: opt.Negative = None,
    shift: opt.Shift = None,
    out: opt.ClipOut = None,
    fmt: opt.ClipFormat = None,
    crf: opt.Crf = None,
    num: opt.Num = None,
    device: opt.Device = "auto",
    dtype: opt.Dtype = "auto",
    fp8: opt.Fp8 = False,
    memory: opt.Memory = "auto",
    max_vram: opt.MaxVram = None,
    refine: opt.Refine = None,
    refiner: opt.Refiner = None,
    dry_run: opt.DryRun = False,
    preview: opt.Preview = None,
    from_file: opt.FromFile = None,
    force: opt.Force = False,
    as_json: opt.Json = False,
) -> None:
    """Generate a clip that moves through the world of a first frame (--image) along a camera path (--camera FILE
    or --actions KEYS) with SANA-WM."""
    flags = dict(locals())
    flags["from"] = flags.pop("from_file")
    flags["format"] = flags.pop("fmt")
    console.settings.json = as_json
    run(flags)


# -- checks (no torch) ----------------------------------------------------------------------------------------

def check_size(res: Any) -> tuple[int, int] | None:
    from .generation import CLIP_NAMED_SIZES, parse_resolution

    size = parse_resolution(res, CLIP_NAMED_SIZES)
    if size is not None and (size[0] % SIZE_MULTIPLE or size[1] % SIZE_MULTIPLE):
        raise UsageError(f"size {size[0]}x{size[1]} is not a multiple of {SIZE_MULTIPLE}",
                         "SANA-WM generates 1280x704 (sides are multiples of 32)")
    return size


def check_settings(settings: dict[str, Any]) -> None:
    """Every value of the run's settings, before anything loads."""
    from sana.outputs import CLIP_FORMATS

    check_size(settings.get("res"))
    if settings.get("frames") is not None and not 1 <= int(settings["frames"]) <= MAX_FRAMES:
        # refused rather than snapped: 8k+1 snapping rounds up, past the maximum
        raise UsageError(f"--frames {settings['frames']} is out of range", f"SANA-WM makes 1 to {MAX_FRAMES} frames")
    if settings.get("steps") is not None and int(settings["steps"]) < 1:
        raise UsageError(f"--steps {settings['steps']}; expected a whole number >= 1")
    if settings.get("cfg") is not None and not (math.isfinite(float(settings["cfg"])) and float(settings["cfg"]) >= 0):
        raise UsageError(f"--cfg {float(settings['cfg']):g} must be a finite number >= 0")
    if settings.get("shift") is not None and not (math.isfinite(float(settings["shift"])) and float(settings["shift"]) > 0):
        raise UsageError(f"--shift {float(settings['shift']):g} must be a finite number > 0")
    fmt = settings.get("format")
    if fmt is not None and fmt not in CLIP_FORMATS:
        raise UsageError(f"unknown --format '{fmt}'", f"use {', '.join(CLIP_FORMATS)}")
    crf = settings.get("crf")
    if crf is not None and not 0 <= int(crf) <= 51:
        raise UsageError(f"--crf {crf} is out of range", "use 0 (lossless) to 51")


# -- defaults ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorldDefaults:
    steps: int
    cfg: float
    shift: float
    frames: int
    width: int
    height: int


def world_defaults(spec, scheduler: dict) -> WorldDefaults:
    """The preset's defaults (a local folder: the released preset's), the model's scheduler file winning for the
    flow shift (flow Euler's `shift`)."""
    from sana.registry import get_spec

    d = (spec or get_spec(WORLD_MODEL)).defaults
    shift = scheduler.get("shift") if scheduler.get("_class_name") == "FlowMatchEulerDiscreteScheduler" else None
    return WorldDefaults(steps=int(d["steps"]), cfg=float(d["guidance"]), shift=float(shift or d["flow_shift"]),
                         frames=int(d["frames"]), width=int(d["width"]), height=int(d["height"]))


# -- the run ----------------------------------------------------------------------------------------------------

def run(flags: dict[str, Any]) -> None:
    from sana.camera import FRAME_STRIDE
    from sana.registry import find_spec

    from .generation import DTYPE_CHOICES, check_family, default_model, merge_settings, replay_settings, resolve_for
    from .clip_settings import open_first_frame, recorded_first_frame

    # 1. Settings from --from's record and the command line, every value checked (before torch loads).
    from_path = Path(flags["from"]).expanduser() if flags.get("from") else None
    record = None
    if from_path is not None:
        from sana.outputs import read_metadata

        record = read_metadata(from_path)
    replay = {k: v for k, v in replay_settings(from_path, "world").items() if k in (*WORLD_KEYS, "model")}
    if record is not None and record.family != "wm":
        record = None  # another command's record gives its prompt and seed, not a camera
    if replay.get("image"):  # a relative first frame (older records) is found beside the replayed clip
        replay["image"] = recorded_first_frame(replay["image"], str(from_path))
    if record is not None and record.extra.get("refiner") and replay.get("frames"):
        replay["frames"] = int(replay["frames"]) + 1  # the refiner drops the first of the frames stage 1 made
    explicit = {k: flags.get(k) for k in WORLD_KEYS}
    settings = merge_settings(replay, explicit)
    check_settings(settings)
    from .gen import check_fp8_early

    check_fp8_early(flags)
    from sana.memory import check_mode, parse_memory_size  # the planner's checks import no torch

    memory_mode = check_mode(flags.get("memory") or "auto")
    max_vram = parse_memory_size(flags["max_vram"]) if flags.get("max_vram") else None
    if (flags.get("dtype") or "auto") not in DTYPE_CHOICES:
        raise UsageError(f"unknown --dtype '{flags['dtype']}'", f"use {', '.join(DTYPE_CHOICES)}")
    preview, dry_run, force = flags.get("preview"), bool(flags.get("dry_run")), bool(flags.get("force"))
    planning = dry_run or preview is not None
    # The default model is looked up in step 5, after every input is checked: a typo is reported before
    # "no model is downloaded".
    model_arg = flags.get("model") or replay.get("model")
    spec = find_spec(model_arg) if model_arg else None
    if spec is not None:
        check_family(model_arg, spec.family, "world")

    # 2. The first frame, decoded now (the camera's intrinsics are in its pixels).
    first = None
    if settings.get("image"):
        replayed = record is not None and not explicit.get("image")
        first = open_first_frame(str(settings["image"]), record.extra.get("image_sha256") if replayed else None,
                                 str(from_path) if replayed else None)
    elif not preview:
        raise UsageError("no --image given", "SANA-WM continues a first frame: pass --image FILE, the view from the "
                         "camera path's first pose")

    # 3. The camera path: resolved for the first frame's size, its notices printed. Frames and size come from the
    #    preset (a local folder or no --model: the released preset's), so no model is needed yet.
    preset = world_defaults(spec, {})
    width, height = check_size(settings.get("res")) or (preset.width, preset.height)
    frames = int(settings["frames"]) if settings.get("frames") is not None else None
    image_size = first.image.size if first else (width, height)
    from .world_camera import camera_source, resolve_path

    path = resolve_path(camera_source(flags, record, from_path), image_size, frames, preset.frames)
    for notice in path.notices:
        console.notice(notice)
    latent_frames = (path.num_frames - 1) // FRAME_STRIDE + 1
    if latent_frames > ROPE_POSITIONS:
        raise UsageError(f"{path.num_frames} frames are {latent_frames} latent frames, more than the DiT's position "
                         f"table ({ROPE_POSITIONS})", "use fewer --frames")

    # 4. What will be written: the preview file, or seeds and clip paths (clips and their camera files).
    if preview is not None:
        preview_dest = Path(preview).expanduser()
        _check_preview_dest(preview_dest, force)
    else:
        prompt, seeds, clips = _plan_outputs(settings, replay, explicit, dry_run=dry_run, force=force)

    # 5. The model: resolved (no download; a dry run or a preview plans from the registry alone), its defaults.
    from sana.components import scheduler_config

    model_arg = model_arg or default_model("world", planning=planning)
    resolved, spec, _ = resolve_for("world", model_arg, dry_run=planning)
    defaults = world_defaults(spec, scheduler_config(resolved.path) if resolved else {})
    refiner_dir = _refiner_to_use(flags, record, resolved)
    if refiner_dir is not None:
        from sana.pipelines.world_refiner import check_refinable

        refusal = check_refinable(path.num_frames)
        if refusal:
            raise UsageError(refusal, "ask for more --frames, or run without the refiner")

    # 6. --preview: the path drawn, nothing loaded.
    if preview is not None:
        from sana.camera.preview import save_preview

        written = save_preview(path, preview_dest)
        if console.settings.json:
            console.json_line({"preview": str(written.resolve()), "frames": path.num_frames, "fps": path.fps,
                               "camera": path.describe()})
        else:
            console.out.print(str(written), highlight=False)
        return

    # 7. Device, precision and the memory plan (a dry run prints the clip, the path and the plan, and stops here).
    from sana.memory import Workload, plan_memory
    from sana.device import DTYPE_NAMES, DTYPES, limit_process_memory, pick_device, probe_device

    from .generation import component_sizes, plan_table, quiet_libraries, weights_variant

    cfg = float(settings["cfg"]) if settings.get("cfg") is not None else defaults.cfg
    work = Workload(width, height, images=1, rows=1 + (cfg > 1.0), frames=path.num_frames, conditioned=True,
                    fps=path.fps)
    device = pick_device(flags.get("device") or "auto")
    info = probe_device(device)
    sizes = component_sizes(resolved, spec, None)
    fp8 = bool(flags.get("fp8"))
    t_config = {"_class_name": "SanaWMTransformer3DModel",
                **(_transformer_config(resolved) or (spec.transformer if spec else {}))}
    if fp8:  # the planner counts the block linears at a byte a weight
        from sana.memory import with_fp8_blocks

        sizes = with_fp8_blocks(sizes, t_config)

    def replan(other_sizes):
        return plan_memory(info, other_sizes, work, mode=memory_mode, max_vram=max_vram,
                           dtype=flags.get("dtype") or "auto")

    plan = replan(sizes)
    plan = dataclasses.replace(plan, cuda_graphs=False)  # the world DiT's step is not graph-captured
    if max_vram is not None and not info.is_accelerator:
        console.notice("--max-vram caps GPU memory; this run uses the CPU, so it has no effect")
    from .gen import check_fp8, note_fp8_would_fit

    if fp8:
        check_fp8(device, plan.dtype)
    note_fp8_would_fit(plan, device, t_config, replan, fp8=fp8)
    if dry_run and console.settings.json:
        from .generation import plan_json

        frames_out = path.num_frames - (1 if refiner_dir is not None else 0)  # stage 2 drops the anchor frame
        console.json_line({"dry_run": True, "model": model_arg, "clips": [{
            "prompt": prompt, "seeds": list(seeds), "frames": frames_out, "fps": path.fps,
            "seconds": round(frames_out / path.fps, 3), "width": width, "height": height,
            "steps": int(settings.get("steps") or defaults.steps), "cfg": cfg,
            "flow_shift": float(settings.get("shift") or defaults.shift), "camera": path.describe(),
            "refiner": str(refiner_dir) if refiner_dir is not None else None}], "memory": plan_json(plan)})
        return
    if dry_run:
        console.out.print(f"{len(seeds)} clip(s): {plan.clip(path.fps)}: {prompt}", highlight=False)
        console.out.print(f"camera: {path.describe()}", highlight=False)
        if refiner_dir is not None:
            console.out.print(f"stage 2: the LTX-2 refiner in {refiner_dir} (its own placement, decided after "
                              f"loading; {path.num_frames - 1} frames come out)", highlight=False)
        console.table(plan_table(plan, model_arg))
        return
    if not plan.fits:
        console.notice(f"the memory plan for {path.num_frames} frames in one pass {plan.notes()[0]}")
    if max_vram is not None:
        limit_process_memory(device, max_vram)
    dtype = DTYPES[plan.dtype]

    # 8. Load where the plan keeps each component.
    quiet_libraries()
    from sana.pipelines.world import WorldPipeline, WorldRequest

    console.info(f"loading {model_arg} ({DTYPE_NAMES[dtype]}{', fp8 block linears' if fp8 else ''} on {device})")
    console.info(plan.headline())
    start = time.perf_counter()
    pipe = WorldPipeline.from_pretrained(resolved.path, dtype=dtype, device=device,
                                         variant=weights_variant(spec, plan), plan=plan, fp8=fp8)
    stage2 = None
    if refiner_dir is not None:
        from sana.pipelines.world_refiner import WorldRefiner

        quiet_libraries()  # diffusers and transformers are imported by now: their loading bars go too

        stage2 = WorldRefiner.load(refiner_dir, dtype=dtype, device=device)
        console.info(f"refiner: {refiner_dir} ({stage2.placement})")
    load_seconds = time.perf_counter() - start

    # 9. One clip a seed, each saved with its record and its camera file.
    request = WorldRequest(
        prompt=prompt, image=first.image, camera=path, seeds=seeds,
        steps=int(settings.get("steps") or defaults.steps), guidance=cfg,
        flow_shift=float(settings.get("shift") or defaults.shift), width=width, height=height,
        negative_prompt=settings.get("negative") or "",
    )
    _generate_and_save(pipe, request, clips, settings, model_arg, resolved, dtype, device, first, load_seconds,
                       force, stage2, fp8)


def _transformer_config(resolved) -> dict | None:
    from sana.components import read_json

    path = resolved.path / "transformer" / "config.json" if resolved is not None else None
    return read_json(path) if path is not None and path.is_file() else None


def _refiner_to_use(flags: dict, record, resolved) -> Path | None:
    """--refiner DIR (implies --refine); --refine takes the model folder's refiner/; --from replays a refined
    clip's refiner when its folder is still there. No torch."""
    from sana.pipelines.world_refiner import refiner_folder

    explicit = flags.get("refiner")
    if flags.get("refine") is False:  # --no-refine: stage 1 alone, a refined clip's replay included
        if explicit is not None:
            raise UsageError("--no-refine and --refiner contradict each other", "give one of them")
        return None
    recorded = (record.extra.get("refiner") or {}) if record is not None else {}
    if explicit is None and not flags.get("refine") and recorded.get("path"):
        if not Path(recorded["path"]).is_dir():
            raise UsageError(f"the replayed clip was refined with {recorded['path']}, which is gone",
                             "give --refiner DIR, or --no-refine for its stage 1 alone")
        explicit = recorded["path"]
    if explicit is None and not flags.get("refine"):
        return None
    folder = refiner_folder(str(explicit) if explicit is not None else None, resolved.path if resolved else None)
    if folder is None:
        raise UsageError("--refine: this model folder has no refiner/",
                         "give --refiner DIR (a diffusers-format SanaWMLTX2Refiner folder)")
    return folder.resolve()


def _check_preview_dest(dest: Path, force: bool) -> None:
    from .run_output import check_output_dirs

    if dest.is_dir():
        raise UsageError(f"--preview {dest} is a directory", "give a .png file name")
    if dest.suffix.lower() != ".png":
        raise UsageError(f"--preview {dest}: the preview is a PNG", f"give a .png name, e.g. {dest.stem or 'path'}.png")
    check_output_dirs([dest])
    if dest.exists() and not force:
        raise SanaError(f"--preview {dest} exists", "use --force to overwrite it, or give another --preview path")


def _plan_outputs(settings: dict, replay: dict, explicit: dict, *, dry_run: bool, force: bool
                  ) -> tuple[str, list[int], list[Path]]:
    """(prompt, seeds, clip paths): the clips and the camera files beside them must not exist (unless --force)."""
    from sana.camera.export import camera_json_path
    from sana.outputs import exists_error, plan_clip_paths
    from sana.outputs.video import check_replaceable_frames, clip_format

    from .generation import plan_jobs
    from .run_output import check_output_dirs

    if not str(settings.get("prompt") or "").strip():
        raise UsageError("no prompt given", "give a prompt: sana world \"a prompt\" --image FIRST.png --camera PATH.json, "
                         "or --from CLIP")

    def plan_paths(out: str | None, prompt: str, seeds: list[int], index_start: int, taken: set[Path]) -> list[Path]:
        paths = plan_clip_paths(out, prompt=prompt, seeds=seeds, fmt=settings.get("format"), force=force,
                                index_start=index_start, taken=taken)
        for clip in paths:
            if camera_json_path(clip).exists() and not force:
                raise exists_error(camera_json_path(clip))
            if force:
                _refuse_shared_camera_file(clip)
            if force and clip_format(clip) == "png":  # a frames folder is replaced whole: never one with a user's file
                check_replaceable_frames(clip)
        return paths

    ((prompt, job, seeds, paths),) = plan_jobs([(settings["prompt"], {})], replay, explicit, dry_run=dry_run,
                                               check=check_settings, plan_paths=plan_paths, noun="clips")
    if dry_run:  # no paths planned, but a -o the real run would refuse is refused now
        plan_clip_paths(job.get("out"), prompt=prompt, seeds=seeds, fmt=job.get("format"), force=True)
    check_output_dirs(paths)
    return prompt, seeds, paths


def _refuse_shared_camera_file(clip: Path) -> None:
    """Clips of one name in two formats (`walk.mp4`, `walk.gif`, a `walk/` frames folder) would share one camera
    file: --force replaces the clip asked for, never another clip's camera file."""
    from sana.camera.export import camera_json_path
    from sana.outputs.video import CLIP_SUFFIXES

    if not camera_json_path(clip).exists():
        return
    stem = clip.with_suffix("") if clip.suffix else clip
    for suffix in CLIP_SUFFIXES.values():
        other = stem.with_name(stem.name + suffix)
        if other != clip and (other.is_file() if suffix else other.is_dir()):
            raise UsageError(f"{camera_json_path(clip)} is the camera file of {other} too",
                             f"give -o another name than {clip.name}, or move {other.name} away first")


def _generate_and_save(pipe, request, paths: list[Path], settings: dict, model_arg: str, resolved, dtype, device,
                       first, load_seconds: float, force: bool, refiner=None, fp8: bool = False) -> None:
    from sana import __version__
    from sana.camera.export import camera_json_path, camera_record, write_camera_json
    from sana.device import DTYPE_NAMES
    from sana.outputs import GenerationRecord, save_video
    from sana.registry import find_spec

    from .clip_outputs import save_or_keep_clip
    from .run_output import generate_with_progress, print_written

    from .replay import model_record_name

    recorded_model = model_record_name(model_arg, find_spec(model_arg))
    result = generate_with_progress(pipe, request, refiner=refiner)
    timings = {"load": round(load_seconds, 3), **{k: round(v, 3) for k, v in result.timings.items()}}
    camera = request.camera
    crf = int(settings["crf"]) if settings.get("crf") is not None else None
    for frames, seed, path in zip(result.videos, request.seeds, paths):
        camera_extra, camera_text = camera_record(camera, path, frames=result.frames)
        extra = {"device": str(device), "generated_size": list(result.generated_size), "memory": result.memory,
                 "image": str(first.path.resolve()), "image_sha256": first.sha256, **camera_extra}
        if refiner is not None:
            extra["refiner"] = refiner.record(seed)
        if fp8:
            extra["fp8"] = "block linears, e4m3 rowwise"
        record = GenerationRecord(
            prompt=request.prompt, negative_prompt=request.negative_prompt, model=recorded_model,
            model_repo=resolved.repo, model_revision=resolved.revision, family="wm", seed=seed, steps=request.steps,
            guidance=request.guidance, sampler="flow-euler", flow_shift=request.flow_shift, width=request.width,
            height=request.height, frames=result.frames, fps=camera.fps, dtype=DTYPE_NAMES[dtype],
            version=__version__, timings=timings, extra=extra,
        )
        start = time.perf_counter()

        def save(target: Path, temp: bool, frames=frames, record=record, camera_text=camera_text) -> Path:
            written = save_video(frames.numpy(), target, record, fps=camera.fps, force=force or temp, crf=crf)
            write_camera_json(camera, camera_json_path(target), camera_text)  # beside the clip, wherever it went
            return written

        try:
            written = save_or_keep_clip(save, path)
        finally:
            result.timings["save"] = result.timings.get("save", 0.0) + time.perf_counter() - start
        print_written(written, record)
    phases = " | ".join(f"{name} {seconds:.2f}s" for name, seconds in result.timings.items())
    console.info(f"load {load_seconds:.2f}s | {phases}")

