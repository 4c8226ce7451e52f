"""What `sana gen` and `sana sprint` share: settings resolution and the run itself, as numbered steps."""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sana.errors import UsageError

from . import console

# Named sizes users know; SANA's "4K" is 4096 x 4096.
NAMED_SIZES = {"512": (512, 512), "1k": (1024, 1024), "2k": (2048, 2048), "4k": (4096, 4096),
               "720p": (1280, 720), "1080p": (1920, 1080), "1440p": (2560, 1440), "2160p": (3840, 2160)}
SIZE_MULTIPLE = 32


def parse_resolution(text: str | int | None) -> tuple[int, int] | None:
    """`1024` -> (1024, 1024); `1536x1024` -> (1536, 1024) as WxH; `4K` -> (4096, 4096)."""
    if text is None:
        return None
    value = str(text).strip().lower()
    if value in NAMED_SIZES:
        return NAMED_SIZES[value]
    match = re.fullmatch(r"(\d+)(?:\s*[x*×]\s*(\d+))?", value)
    if not match:
        raise UsageError(f"cannot read the size '{text}'", "use 1024, WxH (e.g. 1536x1024), 1K, 2K, 4K, 720p or 1080p")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    if not (SIZE_MULTIPLE <= width <= 16384 and SIZE_MULTIPLE <= height <= 16384):
        raise UsageError(f"size {width}x{height} is out of range", f"sides go from {SIZE_MULTIPLE} to 16384 px")
    return width, height


def snap_size(width: int, height: int) -> tuple[int, int]:
    snapped = tuple(max(SIZE_MULTIPLE, round(v / SIZE_MULTIPLE) * SIZE_MULTIPLE) for v in (width, height))
    if snapped != (width, height):
        console.notice(f"size {width}x{height} snapped to {snapped[0]}x{snapped[1]} (sides must be multiples of {SIZE_MULTIPLE})")
    return snapped  # type: ignore[return-value]


def parse_lora(text: str) -> tuple[Path, float]:
    """`PATH[:SCALE]`; a path that itself contains ':' still works when no scale follows."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
            path = head
        except ValueError:
            path = text
    file = Path(path).expanduser()
    if not file.is_file():
        raise UsageError(f"LoRA file not found: {path}")
    return file, scale


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


# Settings are merged as plain dicts: a JSONL line's overrides beat explicit flags, which beat --from, which
# beats the model's defaults.
SETTING_KEYS = ("prompt", "negative", "seed", "num", "steps", "cfg", "pag", "pag_layer", "res", "sampler", "shift",
                "out", "lora")


def record_settings(record) -> dict[str, Any]:
    """Settings to replay from a stored GenerationRecord."""
    settings = {
        "prompt": record.prompt, "negative": record.negative_prompt, "seed": record.seed, "steps": record.steps,
        "cfg": record.guidance, "pag": record.pag, "sampler": record.sampler, "shift": record.flow_shift,
        "res": f"{record.width}x{record.height}" if record.width and record.height else None, "model": record.model,
    }
    if record.pag_layers:
        settings["pag_layer"] = record.pag_layers[0]
    if record.extra.get("transformer"):
        settings["transformer"] = record.extra["transformer"]
    if record.loras:
        settings["lora"] = [f"{entry['path']}:{entry.get('scale', 1.0)}" for entry in record.loras]
    return {k: v for k, v in settings.items() if v is not None}


def merge_settings(*layers: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    return merged


@dataclass
class ModelDefaults:
    steps: int
    cfg: float
    pag: float
    pag_layer: int
    sampler: str
    shift: float
    resolution: int
    max_timesteps: float = 1.5708
    intermediate_timesteps: float | None = 1.3


def model_defaults(spec, scheduler_config: dict, family: str, native_resolution: int) -> ModelDefaults:
    """Defaults from the preset, with the model's own scheduler file winning for the flow shift."""
    from sana.sampling import DEFAULT_STEPS

    preset = dict(spec.defaults) if spec else {}
    sprint = family == "sprint"
    sampler = preset.get("sampler", "scm" if sprint else "flow-dpm")
    shift = scheduler_config.get("flow_shift", preset.get("flow_shift", 3.0))
    return ModelDefaults(
        steps=int(preset.get("steps", DEFAULT_STEPS[sampler])), cfg=float(preset.get("guidance", 4.5)),
        pag=float(preset.get("pag", 0.0)), pag_layer=int(preset.get("pag_layer", 8)), sampler=sampler,
        shift=float(shift), resolution=native_resolution,
        max_timesteps=float(preset.get("max_timesteps", 1.5708)),
        intermediate_timesteps=preset.get("intermediate_timesteps", 1.3),
    )


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


def quiet_libraries() -> None:
    """diffusers and transformers print progress bars and warnings of their own; ours are enough."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for lib in (diffusers_logging, transformers_logging):
        lib.disable_progress_bar()
        if not console.settings.verbose:
            lib.set_verbosity_error()


def run(flags: dict[str, Any], *, command: str) -> None:
    """The whole run for `sana gen` / `sana sprint` (command names the family it expects)."""
    quiet_libraries()

    from sana import __version__
    from sana.device import DTYPE_NAMES, DTYPES, limit_process_memory, pick_device, probe_device
    from sana.memory import check_mode, parse_memory_size, plan_memory
    from sana.outputs import GenerationRecord, file_sha256, plan_output_paths, read_metadata, save_image
    from sana.pipeline import ImagePipeline, ImageRequest
    from sana.prompts_file import read_prompts
    from sana.sampling import SAMPLERS

    # 1. Settings from --from, the command line and the prompts file.
    replay = record_settings(read_metadata(Path(flags["from"]))) if flags.get("from") else {}
    explicit = {k: flags.get(k) for k in SETTING_KEYS}
    memory_mode = check_mode(flags.get("memory") or "auto")
    max_vram = parse_memory_size(flags["max_vram"]) if flags.get("max_vram") else None
    dry_run = bool(flags.get("dry_run"))
    if flags.get("prompts"):
        if flags.get("prompt"):
            raise UsageError("give a prompt or --prompts FILE, not both")
        jobs = [(job.prompt, dict(job.overrides)) for job in read_prompts(Path(flags["prompts"]))]
    else:
        prompt = flags.get("prompt") or replay.get("prompt")
        if not prompt:
            raise UsageError("no prompt given", f"usage: sana {command} \"a prompt\" (or --prompts FILE, or --from IMAGE)")
        jobs = [(prompt, {})]

    # 2. Seeds and output paths, before anything loads: an existing file fails now, not after a long load.
    force = bool(flags.get("force"))
    planned_jobs, planned, planned_paths = [], 0, set()
    for prompt, overrides in jobs:
        settings = merge_settings(replay, explicit, overrides)
        parse_resolution(settings.get("res"))  # bad sizes and samplers fail before the model loads
        if settings.get("sampler") and settings["sampler"] not in SAMPLERS:
            raise UsageError(f"unknown sampler '{settings['sampler']}'", f"use one of {', '.join(SAMPLERS)}")
        num = int(settings.get("num") or 1)
        seed = random_seed() if settings.get("seed") is None else int(settings["seed"])
        seeds = [(seed + i) & 0xFFFFFFFF for i in range(num)]
        out = settings.get("out")
        if "out" in overrides:  # a prompts-file line's own output: used as given (numbered only for --num)
            index_start = 0
        else:  # a shared `-o file.png` numbers the images of every prompt on
            index_start = planned if len(jobs) > 1 or num > 1 else 0
            planned += num
        paths = [] if dry_run else plan_output_paths(out, prompt=prompt, seeds=seeds, ext=_extension(out), force=force,
                                                     index_start=index_start)
        for path in paths:
            if path in planned_paths:
                raise UsageError(f"two images of this run would be written to {path}", "give each line its own out")
            planned_paths.add(path)
        planned_jobs.append((prompt, settings, seeds, paths))

    # 3. The model: resolve (no download here; a dry run plans from the registry when the weights are absent).
    model_arg = flags.get("model") or replay.get("model") or default_model(command)
    resolved, spec = _resolve(model_arg, registry_only_ok=dry_run)
    from sana.components import check_components, family_from_index, model_index

    family = (spec.family if spec else None) or family_from_index(model_index(resolved.path)) or "sana"
    if command == "sprint" and family != "sprint":
        raise UsageError(f"{model_arg} is not a SANA-Sprint model", "use `sana gen` for it, or pass --model sprint-1.6b")
    if command == "gen" and family == "sprint":
        raise UsageError(f"{model_arg} is a SANA-Sprint model", "use `sana sprint` for it")
    if family not in ("sana", "sana1.5", "sprint"):
        raise UsageError(f"{model_arg} is a {family} model", "this command generates images")
    if resolved is not None:
        check_components(resolved.path)
    lora_args = explicit.get("lora") or replay.get("lora") or []
    loras = [parse_lora(text) for text in lora_args]
    transformer_path = flags.get("transformer") or replay.get("transformer")
    if transformer_path and not Path(transformer_path).expanduser().exists():
        raise UsageError(f"--transformer {transformer_path} does not exist")

    # 4. Requests from the model's defaults, and what the largest of them asks of the device.
    sizes = _component_sizes(resolved, spec, transformer_path)
    from sana.components import scheduler_config

    scheduler = scheduler_config(resolved.path) if resolved else {}
    defaults = model_defaults(spec, scheduler, family, sizes.native_resolution)
    requests = [(_request(prompt, settings, seeds, defaults, family, ImageRequest), paths)
                for prompt, settings, seeds, paths in planned_jobs]
    workload = _workload([r for r, _ in requests], sizes.native_resolution, sprint=family == "sprint")

    # 5. Device, precision and the memory plan (a dry run prints it and stops here).
    device = pick_device(flags.get("device") or "auto")
    info = probe_device(device)
    fp8 = bool(flags.get("fp8"))
    if fp8:
        from sana.memory import with_fp8_blocks

        sizes = with_fp8_blocks(sizes, _transformer_config(resolved, spec, transformer_path))
    plan = plan_memory(info, sizes, workload, mode=memory_mode, max_vram=max_vram, dtype=flags.get("dtype") or "auto")
    if fp8:
        check_fp8(device, plan.dtype)
    if max_vram is not None and not info.is_accelerator:
        console.notice("--max-vram caps GPU memory; this run uses the CPU, so it has no effect")
    if dry_run:
        console.out.print(plan_table(plan, model_arg))
        return
    if max_vram is not None:
        limit_process_memory(device, max_vram)
    dtype = DTYPES[plan.dtype]
    # Variant files of the compute precision when the model has them (e.g. *.bf16.safetensors), else the default.
    variant = plan.dtype
    if spec is not None:
        weight_set = spec.weights.get(plan.dtype)
        variant = weight_set.variant if weight_set else None

    # 6. Load where the plan keeps each component (LoRAs merged at load).
    console.info(f"loading {model_arg} ({DTYPE_NAMES[dtype]}{', fp8 block linears' if fp8 else ''} on {device})")
    console.info(plan.headline())
    start = time.perf_counter()
    pipe = ImagePipeline.from_pretrained(resolved.path, dtype=dtype, device=device, family=family, variant=variant,
                                         loras=loras, transformer_path=transformer_path, plan=plan, fp8=fp8)
    load_seconds = time.perf_counter() - start

    # 7. One generation a prompt (all its seeds in one batch), each image saved with its metadata.
    lora_records = [{"path": str(p), "scale": s, "sha256": file_sha256(p)} for p, s in loras]
    for request, paths in requests:
        result = _generate_with_progress(pipe, request)
        for image, seed, path in zip(result.images, request.seeds, paths):
            record = GenerationRecord(
                prompt=request.prompt, negative_prompt=request.negative_prompt, model=model_arg,
                model_repo=resolved.repo, model_revision=resolved.revision, family=family, seed=seed,
                steps=request.steps, guidance=request.guidance, pag=request.pag,
                pag_layers=list(request.pag_layers) if request.pag > 0 else [], sampler=request.sampler,
                flow_shift=request.flow_shift, width=request.width, height=request.height, dtype=DTYPE_NAMES[dtype],
                loras=lora_records, version=__version__,
                timings={"load": round(load_seconds, 3), **{k: round(v, 3) for k, v in result.timings.items()}},
                extra={"device": str(device), "generated_size": list(result.generated_size),
                       "images_in_batch": len(request.seeds), "memory": result.memory,
                       **({"fp8": "block linears, e4m3 rowwise"} if fp8 else {}),
                       **({"transformer": str(transformer_path)} if transformer_path else {})},
            )
            start = time.perf_counter()
            written = save_image(image, path, record, force=force)
            result.timings["save"] = result.timings.get("save", 0.0) + time.perf_counter() - start
            console.out.print(str(written), highlight=False)
        t = result.timings
        console.info(f"load {load_seconds:.2f}s | encode {t['encode']:.2f}s | denoise {t['denoise']:.2f}s | "
                     f"decode {t['decode']:.2f}s | save {t['save']:.2f}s")


def _resolve(model_arg: str, *, registry_only_ok: bool):
    """(ResolvedModel or None, preset or None). With `registry_only_ok`, a registry model that is not downloaded
    resolves to its preset alone (a dry run plans from the preset's sizes)."""
    from sana.errors import ModelNotFound
    from sana.hub import resolve_model
    from sana.registry import find_spec

    try:
        resolved = resolve_model(model_arg)
    except ModelNotFound:
        spec = find_spec(model_arg) if registry_only_ok else None
        if spec is None or spec.extra.get("embedded"):  # a preset alone plans only the real models' components
            raise
        return None, spec
    return resolved, resolved.spec


def _component_sizes(resolved, spec, transformer_path: str | None):
    """Sizes for the planner: safetensors headers and configs when the model is on disk, else the preset."""
    from sana.memory import sizes_from_directory, sizes_from_spec

    if resolved is None:
        return sizes_from_spec(spec)
    return sizes_from_directory(resolved.path, transformer_config=_transformer_config(resolved, spec, transformer_path))


def _transformer_config(resolved, spec, transformer_path: str | None) -> dict:
    """The DiT config the run uses: a fine-tune folder's own, else the model folder's, else the preset's."""
    from sana.hub import transformer_config

    if transformer_path and Path(transformer_path).expanduser().is_dir():
        config = transformer_config(Path(transformer_path).expanduser())
        if config:
            return config
    if resolved is not None:
        return transformer_config(resolved.path) or (spec.transformer if spec else {})
    return spec.transformer


def _workload(requests: list, native_resolution: int, *, sprint: bool):
    """The largest generation among `requests`: the biggest binned size and the most DiT rows."""
    from sana.memory import Workload
    from sana.pipeline import binned_size

    sizes = [binned_size(r.width, r.height, native_resolution) for r in requests]
    width, height = max(sizes, key=lambda wh: wh[0] * wh[1])

    def rows(r) -> int:
        copies = 1 if sprint else 1 + (r.guidance > 1.0) + (r.pag > 0.0)
        return len(r.seeds) * copies

    return Workload(width=width, height=height, images=max(len(r.seeds) for r in requests),
                    rows=max(rows(r) for r in requests))


def plan_table(plan, model: str):
    """The memory plan as a table: one row a component, then the peak against what the device offers."""
    from rich.table import Table
    from rich.text import Text

    work = plan.work
    table = Table(title=f"memory plan: {model} at {work.width}x{work.height}, {work.images} image(s), "
                        f"DiT batch {work.rows}", title_justify="left", header_style="bold",
                  caption=_plan_caption(plan), caption_justify="left")
    for column in ("component", "dtype", "where", "predicted peak"):
        table.add_column(column, justify="right" if column == "predicted peak" else "left", overflow="fold")
    for row in plan.rows():
        table.add_row(row.component, row.dtype, Text(row.where), "-" if row.peak is None else _gib(row.peak))
    room = "usable RAM" if not plan.device.is_accelerator else "usable" + (f" under the {_gib(plan.cap)} cap" if plan.cap else "")
    table.add_row(Text("peak", style="bold"), "", f"{_gib(plan.budget)} {room}", Text(_gib(plan.peak_bytes), style="bold"))
    return table


def _plan_caption(plan) -> str:
    lines = [plan.device.describe(), plan.headline(), *plan.notes()]
    return "\n".join(lines)


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.1f} GiB"


# Preferred models when --model is not given, best first; the first one downloaded is used.
PREFERRED = {"gen": ("sana1.5-1.6b", "sana-1.6b-bf16", "sana-1.6b", "sana1.5-4.8b", "sana-0.6b", "sana-1.6b-2k",
                     "sana-1.6b-4k", "sana-1.6b-512", "sana-0.6b-512"),
             "sprint": ("sprint-1.6b", "sprint-0.6b")}


def default_model(command: str) -> str:
    """The best downloaded model for the command, with a notice; an error naming what to pull when none is."""
    from sana.hub import list_models

    ready = {entry.name for entry in list_models() if entry.status == "yes"}
    for name in PREFERRED[command]:
        if name in ready:
            console.notice(f"using {name}, the best model downloaded here (--model chooses another)")
            return name
    if command == "gen" and "nano" in ready:
        console.notice(f"no SANA model is downloaded: using the built-in nano model (256 px coloured shapes); "
                       f"`sana models pull {PREFERRED[command][0]}` gets the real one")
        return "nano"
    raise UsageError("no --model given and no model is downloaded",
                     f"run: sana models pull {PREFERRED[command][0]} (or pass --model DIR)")


def _extension(out: str | None) -> str:
    if out:
        suffix = Path(out).suffix.lower()
        if suffix in (".png", ".jpg", ".jpeg", ".webp"):
            return suffix
    return ".png"


def _request(prompt: str, settings: dict[str, Any], seeds: list[int], defaults: ModelDefaults, family: str,
             request_type):
    from sana.sampling import SAMPLERS

    sprint = family == "sprint"
    size = parse_resolution(settings.get("res")) or (defaults.resolution, defaults.resolution)
    width, height = snap_size(*size)
    sampler = settings.get("sampler") or defaults.sampler
    if sampler not in SAMPLERS or (sampler == "scm") != sprint:
        allowed = "scm" if sprint else "flow-dpm, flow-euler"
        raise UsageError(f"unknown sampler '{sampler}' for this model", f"use {allowed}")
    steps = int(settings.get("steps") or (defaults.steps if sampler == defaults.sampler else _default_steps(sampler)))
    if sprint and not 1 <= steps <= 4:
        raise UsageError(f"--steps {steps} is out of range for SANA-Sprint", "use 1 to 4 steps")
    cfg = float(settings["cfg"]) if settings.get("cfg") is not None else defaults.cfg
    pag = float(settings["pag"]) if settings.get("pag") is not None else defaults.pag
    if cfg < 0 or pag < 0:
        raise UsageError("guidance scales must be >= 0")
    if sprint and pag > 0:
        raise UsageError("PAG does not apply to SANA-Sprint")
    request = request_type(
        prompt=prompt, seeds=seeds, width=width, height=height, steps=steps,
        guidance=cfg, sampler=sampler, flow_shift=float(settings.get("shift") or defaults.shift),
        negative_prompt=settings.get("negative") or "", pag=pag,
        pag_layers=(int(settings.get("pag_layer", defaults.pag_layer)),),
        max_timesteps=defaults.max_timesteps, intermediate_timesteps=defaults.intermediate_timesteps,
    )
    return request


def _default_steps(sampler: str) -> int:
    from sana.sampling import DEFAULT_STEPS

    return DEFAULT_STEPS[sampler]


def _generate_with_progress(pipe, request):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from sana.pipeline import Events

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console.err, transient=True, disable=console.settings.quiet) as bar:
        task = bar.add_task("encode", total=request.steps)
        events = Events(on_phase=lambda name: bar.update(task, description=name),
                        on_step=lambda done, total: bar.update(task, completed=done, total=total),
                        on_notice=console.notice)
        return pipe.generate(request, events)
