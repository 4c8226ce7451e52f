"""`sana gen`: text to image with SANA / SANA-1.5 (2K / 4K included), optionally with PAG; and the run that
`sana gen` and `sana sprint` share, as numbered steps on the machinery of `generation`."""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer

from sana.errors import UsageError

from . import console
from . import options as opt
from .generation import (
    DTYPE_CHOICES, IMAGE_SAMPLERS, component_sizes, default_model, parse_resolution, plan_jobs, plan_table,
    quiet_libraries, read_jobs, replay_settings, resolve_for, transformer_config_for, weights_variant,
)
from .image_settings import (LORA_SETTING_FIELDS, check_pag_layers, image_request, images_a_batch, snap_size,
                             model_defaults, output_extension, with_lora_defaults, workload)
from .launch import check_gpus, process_device, share_of_plan, spread_jobs
from .notices import note_cut_prompts, note_large_sizes, note_outside_nano_grammar, note_unused_negative
from .replay import check_replayed_loras, model_record_name, refuse_served_loras, served_lora_args
from .run_output import check_output_dirs, generate_with_progress


def check_image_settings(settings: dict[str, Any], command: str) -> None:
    """One job's values (flags, a prompts-file line or a replayed record, which no option parser saw), before
    anything loads."""
    parse_resolution(settings.get("res"))
    offered = [s for s in IMAGE_SAMPLERS if (s == "scm") == (command == "sprint")]  # scm: Sprint's alone
    if settings.get("sampler") and settings["sampler"] not in offered:
        known = "SANA-Sprint's (sana sprint)" if settings["sampler"] == "scm" else None
        raise UsageError(f"sampler '{settings['sampler']}' is {known}" if known
                         else f"unknown sampler '{settings['sampler']}'", f"use one of {', '.join(offered)}")
    if command == "sprint" and settings.get("steps") is not None and not 1 <= int(settings["steps"]) <= 4:
        raise UsageError(f"--steps {settings['steps']} is out of range for SANA-Sprint", "use 1 to 4 steps")
    guidance_option = "--guidance" if command == "sprint" else "--cfg"  # sprint's option has that name only
    for key, option in (("cfg", guidance_option), ("pag", "--pag"), ("pag_layer", "--pag-layer")):
        if settings.get(key) is not None and not (math.isfinite(float(settings[key])) and float(settings[key]) >= 0):
            raise UsageError(f"{option} {float(settings[key]):g} must be a finite number >= 0")
    if settings.get("shift") is not None and not (math.isfinite(float(settings["shift"])) and float(settings["shift"]) > 0):
        raise UsageError(f"--shift {float(settings['shift']):g} must be a finite number > 0")

def gen(
    prompt: Annotated[Optional[str], typer.Argument(help="What to draw.")] = None,
    model: opt.Model = None,
    transformer: opt.Transformer = None,
    res: opt.Resolution = None,
    steps: opt.Steps = None,
    cfg: opt.Cfg = None,
    pag: Annotated[Optional[float], typer.Option("--pag", callback=opt.check_guidance, help="Perturbed-attention guidance scale (0 = off).")] = None,
    pag_layer: Annotated[Optional[int], typer.Option("--pag-layer", help="Block whose self-attention PAG perturbs.")] = None,
    seed: opt.Seed = None,
    negative: opt.Negative = None,
    sampler: opt.Sampler = None,
    shift: opt.Shift = None,
    out: opt.Out = None,
    num: opt.Num = None,
    prompts: opt.Prompts = None,
    lora: opt.Lora = None,
    device: opt.Device = "auto",
    dtype: opt.Dtype = "auto",
    fp8: opt.Fp8 = False,
    memory: opt.Memory = "auto",
    max_vram: opt.MaxVram = None,
    dry_run: opt.DryRun = False,
    from_file: opt.FromFile = None,
    force: opt.Force = False,
    skip_existing: opt.SkipExisting = False,
    best_of: opt.BestOf = None,
    reward: opt.Reward = None,
    as_json: opt.Json = False,
    gpus: opt.Gpus = 1,
    server: opt.Server = None,
    api_key: opt.ApiKey = None,
) -> None:
    """Generate images from a prompt (here, or on a running `sana serve` with --server URL)."""
    flags = dict(locals())
    flags["from"] = flags.pop("from_file")
    run(flags, command="gen")


# Settings are merged as plain dicts: a JSONL line's overrides beat explicit flags, which beat --from, which
# beats the model's defaults.
SETTING_KEYS = ("prompt", "negative", "seed", "num", "steps", "cfg", "pag", "pag_layer", "res", "sampler", "shift",
                "out", "lora", "max_timesteps", "intermediate_timesteps")


def check_fp8(device, dtype: str) -> None:
    """--fp8 needs cuBLAS's fp8 GEMM (compute capability 8.9+) and bf16 activations."""
    import torch

    from sana.ops import fp8_supported

    if device.type != "cuda":
        raise UsageError(f"--fp8 needs an NVIDIA GPU; this run uses {device}")
    if not fp8_supported(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise UsageError(f"--fp8 needs compute capability 8.9+ (Ada, Hopper); this GPU has {major}.{minor}",
                         "drop --fp8")
    if dtype != "bf16":
        raise UsageError(f"--fp8 runs with bf16 activations, not {dtype}", "drop --dtype or pass --dtype bf16")


def suggests_fp8(plan, fp8_plan: Callable[[], Any], *, fp8: bool, supported: bool) -> bool:
    """Whether to suggest --fp8: not asked for, a GPU with fp8 GEMMs, bf16 activations, and the bf16 `plan` keeps
    the transformer off the device (offloaded or streamed) where `fp8_plan()` (the same run with fp8 block weights,
    made only when the rest holds) fits with it resident. Never switched on unasked: fp8 moves the output."""
    if fp8 or not supported or plan.dtype != "bf16" or plan.home("transformer") == "device":
        return False
    with_fp8 = fp8_plan()
    return with_fp8.fits and with_fp8.home("transformer") == "device"


def note_fp8_would_fit(plan, device, transformer_config: dict, replan: Callable[[Any], Any], *, fp8: bool) -> None:
    """One notice where --fp8 would keep on the GPU the transformer that `plan` moves off it (`suggests_fp8`);
    `replan(sizes)` plans the same run for other component sizes."""
    from sana.memory import with_fp8_blocks
    from sana.ops import fp8_supported

    def fp8_plan():
        return replan(with_fp8_blocks(plan.sizes, transformer_config))

    if suggests_fp8(plan, fp8_plan, fp8=fp8, supported=fp8_supported(device)):
        now = "streaming its blocks" if plan.home("transformer") == "streamed" else "offloading it"
        console.notice(f"--fp8 would keep the transformer on the GPU instead of {now} (faster; the output moves "
                       "~3% from bf16's)")


def check_fp8_early(flags: dict[str, Any]) -> None:
    """--fp8 where it cannot run, refused before torch loads: an explicit CPU / MPS device, or no NVIDIA driver on
    this machine (the full check, `check_fp8`, needs the GPU itself). With --server, the server's refusal of local
    flags says more."""
    if not flags.get("fp8") or flags.get("server"):
        return
    device = str(flags.get("device") or "auto")
    if device in ("cpu", "mps"):
        raise UsageError(f"--fp8 needs an NVIDIA GPU; this run uses {device}")
    if device == "auto" and not nvidia_driver_present():
        raise UsageError("--fp8 needs an NVIDIA GPU; none is visible here", "drop --fp8")


def nvidia_driver_present() -> bool:
    """Whether this machine has the NVIDIA driver, told without a CUDA context: its kernel module's /proc entry
    or its nvidia-smi (Linux); True where neither is a reliable sign (Windows), so the full check decides."""
    import shutil
    import sys

    if sys.platform == "darwin":
        return False
    if not sys.platform.startswith("linux"):
        return True
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def run(flags: dict[str, Any], *, command: str) -> None:
    """The whole run for `sana gen` / `sana sprint` (command names the family it expects). Steps 1-3 read no
    weights and import no torch: every mistake in the arguments is reported in a fraction of a second."""
    from sana.lora import parse_lora_arg
    from sana.outputs import check_jpeg_room, plan_output_paths

    # 1. Settings from --from, the command line and the prompts file; LoRAs and the transformer file checked.
    replay = replay_settings(flags.get("from"), command)
    explicit = {k: flags.get(k) for k in SETTING_KEYS}
    dry_run, force = bool(flags.get("dry_run")), bool(flags.get("force"))
    skip_existing = bool(flags.get("skip_existing"))
    console.settings.json = bool(flags.get("as_json"))
    if force and skip_existing:
        raise UsageError("--force and --skip-existing contradict each other", "give one of them")
    if explicit.get("intermediate_timesteps") is not None and explicit.get("steps") not in (None, 2):
        raise UsageError(f"--intermediate-timesteps is the middle timestep of a 2-step run, not of {explicit['steps']}",
                         "drop it, or pass --steps 2")
    gpus = int(flags.get("gpus") or 1)
    check_gpus(gpus, flags, noun="images")
    from .best_of import check_flags as check_best_of

    check_best_of(flags)
    check_fp8_early(flags)
    if (flags.get("dtype") or "auto") not in DTYPE_CHOICES:
        raise UsageError(f"unknown --dtype '{flags['dtype']}'", f"use {', '.join(DTYPE_CHOICES)}")
    from sana.memory import check_mode, parse_memory_size  # the planner's checks import no torch

    memory_mode = check_mode(flags.get("memory") or "auto")
    max_vram = parse_memory_size(flags["max_vram"]) if flags.get("max_vram") else None
    jobs = read_jobs(flags, replay, command, check_line=lambda settings: check_image_settings(settings, command))
    for _, overrides in jobs:
        foreign = sorted(set(overrides) - set(SETTING_KEYS))
        if foreign:
            raise UsageError(f"the prompts file sets {', '.join(foreign)}, which images do not take",
                             "clips are made by `sana video`")
    if flags.get("server"):  # the server has the model and its LoRAs: --lora names one of its list
        from .remote import refuse_local_flags

        refuse_local_flags(flags)
    if flags.get("server") and any("lora" in overrides for _, overrides in jobs):
        raise UsageError("a prompts file's \"lora\" with --server: the server applies --lora to every image",
                         "run without --server, or give --lora once")
    if not flags.get("server"):  # every LoRA named anywhere, checked before torch
        if replay.get("lora") and not explicit.get("lora"):
            refuse_served_loras(flags["from"])
        for text in {t for _, o in jobs for t in o.get("lora") or []} | set(explicit.get("lora") or
                                                                            replay.get("lora") or []):
            parse_lora_arg(text)
        if replay.get("lora") and not explicit.get("lora"):
            check_replayed_loras(flags["from"])
    transformer_path = flags.get("transformer") or replay.get("transformer")
    if transformer_path and not Path(transformer_path).expanduser().exists():
        raise UsageError(f"--transformer {transformer_path} does not exist")

    # 2. Seeds and output paths, before anything loads: an existing file fails now, not after a long load.
    def check(settings: dict[str, Any]) -> None:
        check_image_settings(settings, command)

    def plan_paths(out: str | None, prompt: str, seeds: list[int], index_start: int, taken: set[Path]) -> list[Path]:
        return plan_output_paths(out, prompt=prompt, seeds=seeds, ext=output_extension(out), force=force or skip_existing,
                                 index_start=index_start, taken=taken)

    planned_jobs = share_of_plan()  # one of --gpus N's processes: the parent planned the outputs
    if planned_jobs is None:
        planned_jobs = plan_jobs(jobs, replay, explicit, dry_run=dry_run, check=check, plan_paths=plan_paths,
                                 skip_existing=skip_existing, model=flags.get("model") or replay.get("model"),
                                 sizes_asked=lambda res: snap_size(*parse_resolution(res)))
        check_output_dirs([path for *_, paths in planned_jobs for path in paths])
        for prompt, settings, _, paths in planned_jobs:
            if any(Path(path).suffix.lower() in (".jpg", ".jpeg") for path in paths):
                check_jpeg_room(prompt, settings.get("negative") or "")
        if not planned_jobs:
            console.info("nothing to make: every output exists")
            return
    if flags.get("server"):  # sent to a running `sana serve`; the files written here as below (no torch)
        from .remote import generate_images

        model = flags.get("model") or replay.get("model")
        loras = explicit.get("lora") or (served_lora_args(flags["from"]) if replay.get("lora") else None)
        generate_images({**flags, "lora": loras}, planned_jobs, model, force)
        return

    # 3. The model: resolved and its family checked (no download; a dry run plans from the registry alone).
    model_arg = flags.get("model") or replay.get("model") or default_model(command, planning=dry_run)
    resolved, spec, family = resolve_for(command, model_arg, dry_run=dry_run)
    from .best_of import CANDIDATES_A_BATCH, reward_terms as best_of_rewards

    reward_terms = best_of_rewards(flags, spec, model_arg)
    if gpus > 1 and not dry_run and spread_jobs(planned_jobs, gpus, noun="images", device=flags.get("device")):
        return  # --gpus N: the processes made the images

    quiet_libraries()
    from sana.trace import mark, span

    mark("arguments checked")
    from sana import __version__
    from sana.device import DTYPE_NAMES, DTYPES, limit_process_memory, pick_device, probe_device, start_cuda_context

    if not dry_run:
        start_cuda_context(flags.get("device") or "auto")  # made while the modules below import
    from sana.memory import plan_memory
    from sana.errors import Interrupted
    from sana.outputs import GenerationRecord, file_sha256, save_image
    from sana.pipelines.image import ImagePipeline, ImageRequest

    from .run_output import print_written, save_or_keep
    from .notices import note_cuda_build_without_gpu

    mark("pipeline modules imported")
    # 4. Requests from the model's defaults, and what the largest of them asks of the device.
    sizes = component_sizes(resolved, spec, transformer_path)
    from sana.components import scheduler_config

    scheduler = scheduler_config(resolved.path) if resolved else {}
    base_defaults = model_defaults(spec, scheduler, family, sizes.native_resolution,
                                   resolved.path if resolved else None)
    given = {key for key in LORA_SETTING_FIELDS.values() if explicit.get(key) is not None}
    lora_sets: dict[tuple, Any] = {}  # each job's LoRAs (a prompts-file line may name its own) -> their defaults
    requests, job_loras = [], []
    for prompt, settings, seeds, paths in planned_jobs:
        loras = tuple(parse_lora_arg(text) for text in settings.get("lora") or [])
        if loras not in lora_sets:
            lora_sets[loras] = with_lora_defaults(base_defaults, list(loras), given)
        requests.append((image_request(prompt, settings, seeds, lora_sets[loras], family, ImageRequest), paths))
        job_loras.append(loras)
    check_pag_layers([r for r, _ in requests], transformer_config_for(resolved, spec, transformer_path), model_arg)
    note_large_sizes([(r.width, r.height) for r, _ in requests], sizes.native_resolution)
    note_outside_nano_grammar(spec, [r.prompt for r, _ in requests])
    if family != "sprint":
        note_unused_negative([r for r, _ in requests])
    elif any(r.negative_prompt for r, _ in requests):  # from a prompts file or a replayed image
        console.notice("SANA-Sprint takes no negative prompt: the one given is left out, and not recorded")
        requests = [(dataclasses.replace(r, negative_prompt=""), paths) for r, paths in requests]
    batches = [dataclasses.replace(r, seeds=r.seeds[:1] * CANDIDATES_A_BATCH) if reward_terms else r
               for r, _ in requests]  # with --best-of, a forward draws a few candidates of one image
    work = workload(batches, sizes.native_resolution, sprint=family == "sprint")

    # 5. Device, precision and the memory plan (a dry run prints it and stops here).
    device = process_device(pick_device(flags.get("device") or "auto"))  # --gpus N: this process's GPU
    note_cuda_build_without_gpu(device)
    with span("probe device"):
        info = probe_device(device)
    fp8 = bool(flags.get("fp8"))
    if fp8:
        from sana.memory import with_fp8_blocks

        sizes = with_fp8_blocks(sizes, transformer_config_for(resolved, spec, transformer_path))
    plan = plan_memory(info, sizes, work, mode=memory_mode, max_vram=max_vram, dtype=flags.get("dtype") or "auto")
    if not reward_terms:  # --best-of batches its candidates itself
        def plan_for(count: int):
            trimmed = [dataclasses.replace(r, seeds=r.seeds[:count]) for r, _ in requests]
            return plan_memory(info, sizes, workload(trimmed, sizes.native_resolution, sprint=family == "sprint"),
                               mode=memory_mode, max_vram=max_vram, dtype=flags.get("dtype") or "auto")

        per_batch, plan = images_a_batch(max(len(r.seeds) for r, _ in requests), device, plan, plan_for)
    else:
        per_batch = max(len(r.seeds) for r, _ in requests)
    if fp8:
        check_fp8(device, plan.dtype)

    def replan(other_sizes):
        return plan_memory(info, other_sizes, plan.work, mode=memory_mode, max_vram=max_vram,
                           dtype=flags.get("dtype") or "auto")

    note_fp8_would_fit(plan, device, transformer_config_for(resolved, spec, transformer_path), replan, fp8=fp8)
    if max_vram is not None and not info.is_accelerator:
        console.notice("--max-vram caps GPU memory; this run uses the CPU, so it has no effect")
    if dry_run:
        print_dry_run(model_arg, [r for r, _ in requests], plan)
        return
    if max_vram is not None:
        limit_process_memory(device, max_vram)
    dtype = DTYPES[plan.dtype]
    variant = weights_variant(spec, plan)
    mark("planned")

    # 6. Load where the plan keeps each component, LoRAs merged at load: once a set of LoRAs, the jobs grouped by
    #    the set they name (a prompts file's lines may name their own).
    console.info(f"loading {model_arg} ({DTYPE_NAMES[dtype]}{', fp8 block linears' if fp8 else ''} on {device})")
    console.info(plan.headline())
    by_loras: dict[tuple, list] = {}
    for loras, (request, paths) in zip(job_loras, requests):
        by_loras.setdefault(loras, []).extend(
            (dataclasses.replace(request, seeds=request.seeds[i:i + per_batch]), paths[i:i + per_batch])
            for i in range(0, len(request.seeds), per_batch))  # a prompt's seeds in batches the plan fits
    recorded_model = model_record_name(model_arg, spec)
    transformer_record = str(Path(transformer_path).expanduser().resolve()) if transformer_path else None

    # 7. One generation a batch of a prompt's seeds, each image saved with its metadata as soon as it is decoded;
    #    Ctrl-C says what was kept.
    total, saved = sum(len(paths) for _, paths in requests), []
    rewards = None
    if reward_terms:
        from sana.rewards.plugins import RewardSet

        rewards = RewardSet(reward_terms, device)
    pipe = None
    try:
        for loras, batches_of_set in by_loras.items():
            if pipe is not None:  # another set of LoRAs: the model loaded again with them (the old one freed first)
                del pipe
                _free_memory(device)
            start = time.perf_counter()
            first = batches_of_set[0][0]
            pipe = ImagePipeline.from_pretrained(resolved.path, dtype=dtype, device=device, family=family,
                                                 variant=variant, loras=list(loras), transformer_path=transformer_path,
                                                 plan=plan, fp8=fp8, warm_for=(first.width, first.height))
            load_seconds = time.perf_counter() - start
            for path, scale in loras:
                console.info(f"LoRA applied: {path} (scale {scale:g})")
            note_cut_prompts(pipe.text_encoder, [request.prompt for request, _ in batches_of_set])
            # absolute, so --from finds the LoRA from any folder (the hash says whether it is still the same file)
            lora_records = [{"path": str(Path(p).resolve()), "scale": s, "sha256": file_sha256(p)} for p, s in loras]
            for request, paths in batches_of_set:
                save_times: list[float] = []

                def save(index: int, image, details: dict, request=request, paths=paths, save_times=save_times,
                         seed: int | None = None, chosen: dict | None = None, lora_records=lora_records,
                         load_seconds=load_seconds) -> None:
                    seed, path = request.seeds[index] if seed is None else seed, paths[index]
                    record = GenerationRecord(
                        prompt=request.prompt, negative_prompt=request.negative_prompt, model=recorded_model,
                        model_repo=resolved.repo, model_revision=resolved.revision, family=family, seed=seed,
                        steps=request.steps, guidance=request.guidance, pag=request.pag,
                        pag_layers=list(request.pag_layers) if request.pag > 0 else [], sampler=request.sampler,
                        flow_shift=request.flow_shift, width=request.width, height=request.height,
                        dtype=DTYPE_NAMES[dtype], loras=lora_records, version=__version__,
                        timings={"load": round(load_seconds, 3),
                                 **{k: round(v, 3) for k, v in details["timings"].items()}},
                        extra={"device": str(device), **request.record_extra(),
                               "generated_size": list(details["generated_size"]),
                               "images_in_batch": chosen["batch"] if chosen else len(request.seeds),
                               "memory": details["memory"],
                               **({"fp8": "block linears, e4m3 rowwise"} if fp8 else {}),
                               **({"best_of": chosen} if chosen else {}),
                               **({"transformer": transformer_record} if transformer_record else {})},
                    )
                    start = time.perf_counter()
                    with span("save"):
                        written = save_or_keep(
                            lambda target: save_image(image, target, record, force=force or target != path), path)
                    save_times.append(time.perf_counter() - start)
                    saved.append(written)
                    print_written(written, record)

                if rewards is not None:
                    result = _best_of_each(pipe, request, rewards, save, flags, reward_terms)
                else:
                    result = generate_with_progress(pipe, request, on_output=save)
                t = result.timings
                console.info(f"load {load_seconds:.2f}s | encode {t['encode']:.2f}s | denoise {t['denoise']:.2f}s | "
                             f"decode {t['decode']:.2f}s | save {sum(save_times):.2f}s")
                load_seconds = 0.0  # said once a load
    except KeyboardInterrupt:
        last = f"; the last is {saved[-1]}" if saved else ""
        raise Interrupted(f"interrupted: {len(saved)} of {total} images saved{last}",
                          "--skip-existing makes the rest" if len(requests) > 1 or total > 1 else None) from None
    finally:
        if rewards is not None:
            rewards.close()


def _free_memory(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _best_of_each(pipe, request, rewards, save, flags: dict, terms) -> Any:
    """--best-of: each output of `request` chosen among its candidates and saved; returns the last generation's
    result (for the timings line)."""
    from .best_of import CANDIDATES_A_BATCH, candidate_seeds, choose_best

    count = int(flags["best_of"])
    last = {}

    def generate(sub):
        last["result"] = generate_with_progress(pipe, sub)
        return last["result"]

    for index, seeds in enumerate(candidate_seeds(request.seeds, count)):
        choice = choose_best(pipe, request, seeds, rewards, generate)
        label = ",".join(f"{t.label}:{t.weight:g}" if t.weight != 1 else t.label for t in terms)
        console.info(f"best of {count} by {label}: seed {choice.seed} (score {choice.score:.4f})")
        save(index, choice.image, choice.details, seed=choice.seed,
             chosen={"candidates": count, "reward": label, "score": round(choice.score, 6),
                     "scores": [list(pair) for pair in choice.scores], "batch": min(count, CANDIDATES_A_BATCH)})
    return last["result"]


def print_dry_run(model_arg: str, requests: list, plan) -> None:
    """The memory plan's table, or with --json one JSON object: the images the run would make and the plan."""
    if not console.settings.json:
        console.table(plan_table(plan, model_arg))
        return
    from .generation import plan_json

    images = [{"prompt": r.prompt, "seeds": list(r.seeds), "width": r.width, "height": r.height, "steps": r.steps,
               "cfg": r.guidance, "pag": r.pag, "sampler": r.sampler, "flow_shift": r.flow_shift,
               "negative": r.negative_prompt} for r in requests]
    console.json_line({"dry_run": True, "model": model_arg, "images": images, "memory": plan_json(plan)})


