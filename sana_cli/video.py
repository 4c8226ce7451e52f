"""`sana video`: text to video and image to video (`--image`) with SANA-Video, as numbered steps.

Every argument is checked before torch is imported; outputs are planned and the model is resolved before
anything loads, so bad input costs a fraction of a second and leaves no file.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sana.components import clip_model_configs
from sana.errors import SanaError, UsageError
from sana.registry import clip_defaults

from . import console
from . import options as opt
from .clip_outputs import FORMAT_NAMES, job_format, once, print_dry_run, save_or_keep_clip, writable_fps
from .clip_settings import (VIDEO_KEYS, FirstFrame, asked_frames, build_request, check_fps, check_settings,
                            note_outside_grammar, note_untrained_lengths, open_first_frame, recorded_first_frame)

def video(
    prompt: Annotated[Optional[str], typer.Argument(help="What happens in the clip.")] = None,
    image: opt.Image = None,
    model: opt.ClipModel = None,
    res: opt.ClipResolution = None,
    frames: opt.Frames = None,
    fps: opt.Fps = None,
    steps: opt.ClipSteps = None,
    cfg: opt.ClipCfg = None,
    motion_score: opt.MotionScore = None,
    seed: opt.ClipSeed = None,
    negative: opt.Negative = None,
    sampler: opt.Sampler = None,
    shift: opt.Shift = None,
    out: opt.ClipOut = None,
    fmt: opt.ClipFormat = None,
    crf: opt.Crf = None,
    num: opt.ClipNum = None,
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


# -- the run ----------------------------------------------------------------------------------------------------

def run(flags: dict[str, Any]) -> None:
    from sana.outputs import CLIP_FORMATS, clip_format, plan_clip_paths
    from sana.outputs.video import check_replaceable_frames
    from sana.pipelines.sizes import video_binned_size, video_vae_geometry

    from .generation import DTYPE_CHOICES, default_model, plan_jobs, read_jobs, replay_settings, resolve_for
    from .run_output import check_output_dirs
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
    if replay.get("lora") and not flags.get("lora") and not flags.get("server"):
        from .replay import check_replayed_loras

        check_replayed_loras(flags["from"])
    if not (flags.get("prompts") or flags.get("prompt") or replay.get("prompt")):
        raise UsageError("no prompt given", 'give a prompt: sana video "a prompt", or --prompts FILE, or --from CLIP')
    fmt = explicit.get("format")
    if fmt is not None and fmt not in CLIP_FORMATS:
        raise UsageError(f"unknown --format '{fmt}'", f"use {', '.join(CLIP_FORMATS)}")
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

    jobs = read_jobs(flags, replay, "video", noun="CLIP",
                     check_line=lambda overrides: _check_line(overrides, first_frame, fmt))
    for _, overrides in jobs:
        foreign = sorted(set(overrides) - set(VIDEO_KEYS))
        if "lora" in foreign:  # one set of LoRAs a run: the video DiT is loaded once
            raise UsageError("the prompts file sets lora: sana video applies --lora to every clip of a run",
                             "give --lora once, or run each LoRA's prompts on their own")
        if foreign:
            raise UsageError(f"the prompts file sets {', '.join(foreign)}, which clips do not take")
    crf = explicit.get("crf")
    if crf is not None and not 0 <= crf <= 51:
        raise UsageError(f"--crf {crf} is out of range", "use 0 (lossless) to 51")
    asked_crf = crf is not None  # a replayed one encodes alike, without notices where it does not apply
    if crf is None and replay.get("crf") is not None:
        crf = int(replay["crf"])

    def plan_paths(out: str | None, prompt: str, seeds: list[int], index_start: int, taken: set[Path]) -> list[Path]:
        paths = plan_clip_paths(out, prompt=prompt, seeds=seeds, fmt=fmt, force=force or skip_existing,
                                index_start=index_start, taken=taken)
        if force:  # a frames folder is replaced whole: one holding a user's file is refused now, not after the work
            for path in paths:
                if clip_format(path) == "png":
                    check_replaceable_frames(path)
        return paths

    planned_jobs = share_of_plan()  # one of --gpus N's processes: the parent planned the outputs
    if planned_jobs is None:
        planned_jobs = plan_jobs(jobs, replay, explicit, dry_run=dry_run, check=check_settings,
                                 plan_paths=plan_paths, noun="clips", skip_existing=skip_existing,
                                 model=flags.get("model") or replay.get("model"))
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
    t_config, vae_config = clip_model_configs(resolved, spec)
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
    note_untrained_lengths(spec, [(asked_frames(settings, defaults), request.frames)
                                  for (_, settings, _, _), (request, _, _, _) in zip(planned_jobs, requests)])
    note_outside_grammar(spec, [r.prompt for r, _, _, _ in requests])
    _note_untrained_sizes(model_arg, defaults, [(r.width, r.height) for r, _, _, _ in requests])
    from .notices import note_unused_negative

    note_unused_negative([r for r, _, _, _ in requests])
    sample_size = int(t_config.get("sample_size", 0))

    # 4. Device, precision and the memory plan (a dry run prints the clips and the plan, and stops here).
    from .generation import component_sizes, quiet_libraries, weights_variant

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
    from .gen import check_fp8, note_fp8_would_fit

    if fp8:
        check_fp8(device, plan.dtype)

    def replan(other_sizes):
        return plan_memory(info, other_sizes, plan.work, mode=memory_mode, max_vram=max_vram,
                           dtype=flags.get("dtype") or "auto", vae_dtype=flags.get("vae_dtype") or "auto")

    note_fp8_would_fit(plan, device, t_config, replan, fp8=fp8)
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
        from .notices import note_cut_prompts

        note_cut_prompts(pipe.text_encoder, [request.prompt for request, _, _, _ in requests])
        from .replay import model_record_name

        recorded_model = model_record_name(model_arg, spec)
        for request, paths, fps, first in requests:
            _generate_and_save(pipe, request, paths, fps, flags, recorded_model, resolved, dtype, device, first,
                               load_seconds, crf, loras, saved)
            load_seconds = 0.0  # the model loaded once: the first batch's records say so, as `sana gen`'s do
    except KeyboardInterrupt:
        last = f"; the last is {saved[-1]}" if saved else ""
        raise Interrupted(f"interrupted: {len(saved)} of {total} clips saved{last}",
                          "--skip-existing makes the rest" if total > 1 else None) from None


def _note_untrained_sizes(model_arg: str, defaults, sizes: list[tuple[int, int]]) -> None:
    """A notice for a clip size far from the model's own (more than 4x its pixels, or under a quarter): the clip
    comes out without any error, but motion and layouts break there, as they do for lengths it never saw."""
    native = defaults.width * defaults.height
    for width, height in dict.fromkeys(sizes):
        if not native / 4 <= width * height <= 4 * native:
            console.notice(f"{width}x{height} is far from the {defaults.width}x{defaults.height} clips {model_arg} "
                           f"was trained on: expect broken shapes and motion (--res {defaults.width}x"
                           f"{defaults.height} matches)")


def _check_line(overrides: dict[str, Any], first_frame, fmt: str | None) -> None:
    """A prompts-file line's values: the checks of every job's settings, its first frame opened, its output named
    (a clip suffix, a folder for PNG frames); whether the file is there to overwrite is the plan's to say."""
    from sana.outputs import plan_clip_paths

    check_settings(overrides)
    first_frame(overrides)
    if overrides.get("out"):
        plan_clip_paths(overrides["out"], prompt="clip", seeds=[0], fmt=fmt, force=True)


def _generate_and_save(pipe, request, paths: list[Path], fps: float, flags: dict, model_arg: str, resolved, dtype,
                       device, first: FirstFrame | None, load_seconds: float, crf: int | None,
                       loras: list[tuple[Path, float]], saved: list[Path]) -> None:
    """One request's clips made in one batch, each saved (a failed save keeps it in the temp folder) and appended
    to `saved`."""
    from sana import __version__
    from sana.device import DTYPE_NAMES
    from sana.outputs import GenerationRecord, file_sha256, save_video

    from .run_output import generate_with_progress, print_written

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
            loras=[{"path": str(Path(p).resolve()), "scale": s, "sha256": file_sha256(p)} for p, s in loras],
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
