"""Loading what `sana serve` serves: each model resolved, planned and loaded as `sana gen` / `sana video` /
`sana world` load theirs (a `ServedModel`), and the LoRA allow-list (`--lora NAME=PATH[:SCALE]`) checked against
the image and video models it fits."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from sana.errors import SanaError, UsageError

from . import console

COMMANDS = ("gen", "sprint", "video", "world")  # tried in turn: the first whose family the model is
IMAGE_FAMILIES = ("sana", "sana1.5", "sprint")  # what --gpus worker processes and --ray replicas serve


def resolve_any(name: str):
    """(ResolvedModel, preset or None, family) for a model of any family `sana serve` takes."""
    from .generation import resolve_for

    first = None
    for command in COMMANDS:
        try:
            return resolve_for(command, name, dry_run=False)
        except UsageError as exc:  # another family's model, or a name that resolves nowhere
            first = first or exc
    raise first


def load_model(name: str, *, device: str, dtype: str, memory: str, max_vram: int | None, max_batch: int,
               load: bool = True, device_info=None, refiner: str | None = None):
    """Resolve, plan and load one model (SANA, SANA-1.5, SANA-Sprint, SANA-Video or SANA-WM) as a `ServedModel`.
    `load` False (an image model served by worker processes or Ray replicas): everything but the pipeline, which
    stays None. `device_info`: plan for that device (a replica's `DeviceInfo`) instead of probing `device` here.
    `refiner`: for a world model, its stage 2 too (a folder, or "" for the model folder's refiner/)."""
    import torch

    from sana.device import limit_process_memory, pick_device, probe_device

    from .generation import component_sizes, transformer_config_for

    resolved, spec, family = resolve_any(name)
    sizes = component_sizes(resolved, spec, None)
    layers = transformer_config_for(resolved, spec, None).get("num_layers")  # PAG's block check, weights or not
    target = torch.device(device_info.kind) if device_info is not None else pick_device(device or "auto")
    info = device_info or probe_device(target)
    if max_vram is not None and info.is_accelerator and load:
        limit_process_memory(target, max_vram)
    if not load and family not in IMAGE_FAMILIES:
        raise UsageError(f"{name} is a clip model: worker processes (--gpus) and Ray replicas (--ray) serve image "
                         "models for now", "serve it without --gpus or --ray")
    loader = {"video": _video, "wm": _world}.get(family, _image)
    if refiner is not None and family != "wm":
        raise UsageError(f"--refiner {name}: {name} is not a SANA-WM model", "the refiner is SANA-WM's stage 2")
    refiner_dir = None
    if refiner is not None:  # checked before anything loads
        from sana.pipelines.world_refiner import refiner_folder

        refiner_dir = refiner_folder(refiner or None, resolved.path)
        if refiner_dir is None:
            raise UsageError(f"--refiner {name}: its folder has no refiner/", f"give --refiner {name}=DIR")
    served, plan = loader(name, resolved, spec, family, sizes, info, target, dtype=dtype or "auto", memory=memory,
                          max_vram=max_vram, max_batch=max_batch, load=load)
    if refiner_dir is not None:
        from sana.device import DTYPES
        from sana.pipelines.world_refiner import WorldRefiner

        served.refiner = WorldRefiner.load(refiner_dir, dtype=DTYPES[plan.dtype], device=target)
        console.info(f"refiner for {name}: {refiner_dir} ({served.refiner.placement})")
    served.name, served.family, served.device, served.created = name, family, str(target), int(time.time())
    served.repo, served.revision, served.dtype = resolved.repo, resolved.revision, plan.dtype
    served.num_layers = int(layers) if layers is not None else None
    return served


def load_models(names: list[str], loras: list[str], *, device: str, dtype: str, memory: str,
                max_vram: int | None, max_batch: int, threads: int | None = None) -> dict:
    """Every model loaded, the LoRA allow-list attached: what one worker process serves (`--gpus`)."""
    from .generation import quiet_libraries

    if threads:
        import torch

        torch.set_num_threads(threads)
    quiet_libraries()
    allowed = read_allow_list(loras)
    models = {name: load_model(name, device=device, dtype=dtype, memory=memory, max_vram=max_vram,
                               max_batch=max_batch) for name in names}
    attach_loras(models, allowed, quiet=True)
    return models


def _image(name, resolved, spec, family, sizes, info, target, *, dtype, memory, max_vram, max_batch, load=True):
    from sana.components import scheduler_config
    from sana.device import DTYPES
    from sana.memory import Workload, plan_memory
    from sana.pipelines.image import ImagePipeline
    from sana.pipelines.sizes import binned_size

    from .image_settings import model_defaults
    from .generation import weights_variant

    native = sizes.native_resolution
    d = model_defaults(spec, scheduler_config(resolved.path), family, native, resolved.path)
    copies = 1 if family == "sprint" else 3  # CFG and PAG rows: a client may turn either on

    def plan_for(width: int, height: int, images: int, frames: int = 1):
        gen_w, gen_h = binned_size(width, height, native)
        work = Workload(width=gen_w, height=gen_h, images=images, rows=images * copies)
        return plan_memory(info, sizes, work, mode=memory, max_vram=max_vram, dtype=dtype)

    # A full batch at the native size; requests of other sizes are checked against plans of their own.
    plan = plan_for(native, native, max_batch)
    pipe = None
    if load:
        _announce(name, plan, target)
        pipe = ImagePipeline.from_pretrained(resolved.path, dtype=DTYPES[plan.dtype], device=target, family=family,
                                             variant=weights_variant(spec, plan), plan=plan)
    return _served(pipe, family, d, native, plan_for), plan


def _video(name, resolved, spec, family, sizes, info, target, *, dtype, memory, max_vram, max_batch, load=True):
    from sana.components import scheduler_config
    from sana.device import DTYPES
    from sana.memory import Workload, plan_memory
    from sana.pipelines.sizes import video_binned_size
    from sana.pipelines.video import VideoPipeline

    from .generation import weights_variant
    from sana.components import clip_model_configs
    from sana.registry import clip_defaults

    t_config, _ = clip_model_configs(resolved, spec)
    d = clip_defaults(spec, scheduler_config(resolved.path), t_config, resolved.path)
    sample_size = int(t_config.get("sample_size", 0))

    vae = {"dtype": "auto"}  # the model's recommended VAE dtype if the default clip's plan allows it, then fixed

    def plan_for(width: int, height: int, images: int, frames: int = 1):
        gen_w, gen_h = video_binned_size(width, height, sample_size)
        work = Workload(gen_w, gen_h, images=images, rows=2 * images, frames=max(frames, 1), conditioned=True)
        return plan_memory(info, sizes, work, mode=memory, max_vram=max_vram, dtype=dtype, vae_dtype=vae["dtype"])

    plan = plan_for(d.width, d.height, 1, d.frames)
    vae["dtype"] = plan.vae_dt  # the loaded VAE's: later requests' plans (tiles) count it
    _announce(name, plan, target)
    pipe = VideoPipeline.from_pretrained(resolved.path, dtype=DTYPES[plan.dtype], device=target,
                                         variant=weights_variant(spec, plan), plan=plan)
    return _served(pipe, family, d, max(d.width, d.height), plan_for), plan


def _world(name, resolved, spec, family, sizes, info, target, *, dtype, memory, max_vram, max_batch, load=True):
    from sana.camera import MODEL_FPS
    from sana.components import scheduler_config
    from sana.device import DTYPES
    from sana.memory import Workload, plan_memory
    from sana.pipelines.world import WorldPipeline
    from sana.registry import ClipDefaults

    from .generation import weights_variant
    from .world import world_defaults

    d = world_defaults(spec, scheduler_config(resolved.path))

    def plan_for(width: int, height: int, images: int, frames: int = 1):
        work = Workload(width, height, images=1, rows=2, frames=max(frames, 1), conditioned=True, fps=MODEL_FPS)
        plan = plan_memory(info, sizes, work, mode=memory, max_vram=max_vram, dtype=dtype)
        return dataclasses.replace(plan, cuda_graphs=False)  # the world DiT's step is not graph-captured

    plan = plan_for(d.width, d.height, 1, d.frames)
    _announce(name, plan, target)
    pipe = WorldPipeline.from_pretrained(resolved.path, dtype=DTYPES[plan.dtype], device=target,
                                         variant=weights_variant(spec, plan), plan=plan)
    defaults = ClipDefaults(steps=d.steps, cfg=d.cfg, sampler="flow-euler", i2v_sampler="flow-euler",
                            shift=d.shift, frames=d.frames, fps=MODEL_FPS, motion_score=None, width=d.width,
                            height=d.height)
    return _served(pipe, family, defaults, max(d.width, d.height), plan_for), plan


def _served(pipe, family: str, defaults, resolution: int, plan_for):
    from sana.serving.admission import ServedModel

    return ServedModel(name="", pipeline=pipe, family=family, defaults=defaults, resolution=resolution, dtype="",
                       device="", created=0, plan_for=plan_for)


def _announce(name: str, plan, target) -> None:
    console.info(f"loading {name} ({plan.dtype} on {target})")
    console.info(plan.headline())


# -- LoRAs ----------------------------------------------------------------------------------------------------

def read_allow_list(entries: list[str]) -> dict:
    """`--lora NAME=PATH[:SCALE]` entries checked (files, names, scales) before anything loads: name -> AllowedLora."""
    from sana.lora import lora_file, lora_sampling_defaults
    from sana.outputs import file_sha256
    from sana.serving.loras import AllowedLora, parse_allowed

    allowed = {}
    for text in entries:
        try:
            name, path_text, scale = parse_allowed(text)
        except ValueError as exc:
            raise UsageError(str(exc), "e.g. --lora style=loras/style.safetensors:0.8") from None
        if name in allowed:
            raise UsageError(f"--lora {name} is given twice", "give each LoRA its own name")
        path = Path(path_text).expanduser()
        if not path.exists():
            raise UsageError(f"--lora {text}: LoRA file not found: {path_text}")
        path = lora_file(path).resolve()
        allowed[name] = AllowedLora(name=name, path=path, scale=scale, sha256=file_sha256(path),
                                    sampling=lora_sampling_defaults(path))
    return allowed


def attach_loras(models: dict, allowed: dict, *, quiet: bool = False) -> None:
    """Give each image / video model the allowed LoRAs that fit it; a LoRA that fits none is an error."""
    from sana.serving.loras import LoraSwitch

    if not allowed:
        return
    fits: dict[str, list[str]] = {name: [] for name in allowed}
    reasons: dict[str, str] = {}
    for model in models.values():
        if model.kind == "world":
            continue
        usable = {}
        for name, entry in allowed.items():
            try:
                LoraSwitch(model.pipeline.transformer, {name: entry}).check()
            except SanaError as exc:
                reasons.setdefault(name, f"{model.name}: {exc}")
                continue
            usable[name] = entry
            fits[name].append(model.name)
        if usable:
            model.loras = LoraSwitch(model.pipeline.transformer, usable)
    for name, served in fits.items():
        if not served:
            raise SanaError(f"--lora {name} fits no model served here ({reasons.get(name, 'no image model')})",
                            "serve the model it was trained for")
        if not quiet:
            console.info(f"LoRA {name}: {allowed[name].path} (scale {allowed[name].scale:g}) for {', '.join(served)}")
