"""What an image run is asked to make, before anything loads: the model's sampling defaults (and those its LoRAs
carry), each prompt's request, how many images go in a batch and the workload the memory plan sizes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from sana.errors import UsageError
from sana.registry import ModelDefaults

from . import console
from .generation import SIZE_MULTIPLE, parse_resolution


def snap_size(width: int, height: int) -> tuple[int, int]:
    snapped = tuple(max(SIZE_MULTIPLE, round(v / SIZE_MULTIPLE) * SIZE_MULTIPLE) for v in (width, height))
    if snapped != (width, height):
        console.notice(f"size {width}x{height} snapped to {snapped[0]}x{snapped[1]} (sides must be multiples of {SIZE_MULTIPLE})")
    return snapped  # type: ignore[return-value]


def model_defaults(spec, scheduler_config: dict, family: str, native_resolution: int,
                   model_dir: Path | None = None) -> ModelDefaults:
    """Defaults from the preset (for a folder outside the registry, the defaults it carries, as a fine-tuned model
    does), with the model's own scheduler file winning for the flow shift."""
    from sana.components import folder_sampling_defaults
    from sana.sampling import DEFAULT_STEPS

    preset = dict(spec.defaults) if spec else folder_sampling_defaults(model_dir) if model_dir else {}
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


# Sampling settings a LoRA file may carry (`lora.SAMPLING_METADATA_KEY`), by the ModelDefaults field they set.
LORA_SETTING_FIELDS = {"guidance": "cfg", "steps": "steps", "pag": "pag", "sampler": "sampler", "flow_shift": "shift"}


def with_lora_defaults(defaults: ModelDefaults, loras: list[tuple[Path, float]],
                       given: set[str] = frozenset()) -> ModelDefaults:
    """The model's defaults under the sampling settings its LoRAs carry (an RL LoRA trained on CFG-free rollouts
    samples CFG-free), each said in a notice; settings the LoRAs disagree on keep the model's. Options the user
    `given` (by ModelDefaults field) and prompt-file settings still win, as over any default."""
    from sana.lora import LORA_WEIGHTS_NAME, lora_sampling_defaults

    carried: dict[str, dict[Path, object]] = {}
    for path, _ in loras:
        for key, value in lora_sampling_defaults(path).items():
            if key in LORA_SETTING_FIELDS:
                carried.setdefault(key, {})[path] = value
    changes = {}
    for key, by_lora in carried.items():
        if LORA_SETTING_FIELDS[key] in given:
            continue
        values = set(map(json.dumps, by_lora.values()))
        names = ", ".join(p.parent.name + "/" + p.name if p.name == LORA_WEIGHTS_NAME else p.name for p in by_lora)
        if len(values) > 1:
            console.notice(f"the LoRAs ask for different {key} ({names}): the model's default is kept")
            continue
        value = next(iter(by_lora.values()))
        changes[LORA_SETTING_FIELDS[key]] = value
        console.notice(f"{key} {value} from the LoRA ({names}), the setting it was trained to sample with")
    return dataclasses.replace(defaults, **changes) if changes else defaults


# Images a batch on a GPU: at SANA's sizes a few images fill the GPU, and a stop loses at most the batch under way.
MAX_IMAGES_A_BATCH = 4


def images_a_batch(most: int, device, plan, plan_for) -> tuple[int, Any]:
    """How many of a prompt's seeds go in one batch, and the memory plan for that batch: one on a CPU (batching
    gains nothing there, and a --from replay of any image is then the same batch of one), else up to
    MAX_IMAGES_A_BATCH, halved until the plan fits."""
    count = min(most, 1 if device.type == "cpu" else MAX_IMAGES_A_BATCH)
    if count != most:
        plan = plan_for(count)
    while count > 1 and not plan.fits:
        count //= 2
        plan = plan_for(count)
    return count, plan


def workload(requests: list, native_resolution: int, *, sprint: bool):
    """The largest generation among `requests`: the biggest binned size and the most DiT rows."""
    from sana.memory import Workload
    from sana.pipelines.sizes import binned_size

    sizes = [binned_size(r.width, r.height, native_resolution) for r in requests]
    width, height = max(sizes, key=lambda wh: wh[0] * wh[1])

    def rows(r) -> int:
        copies = 1 if sprint else 1 + (r.guidance > 1.0) + (r.pag > 0.0)
        return len(r.seeds) * copies

    return Workload(width=width, height=height, images=max(len(r.seeds) for r in requests),
                    rows=max(rows(r) for r in requests))


def output_extension(out: str | None) -> str:
    if out:
        suffix = Path(out).suffix.lower()
        if suffix in (".png", ".jpg", ".jpeg", ".webp"):
            return suffix
    return ".png"


def image_request(prompt: str, settings: dict[str, Any], seeds: list[int], defaults: ModelDefaults, family: str,
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
    max_timesteps = float(settings.get("max_timesteps") or defaults.max_timesteps)
    intermediate = settings.get("intermediate_timesteps", defaults.intermediate_timesteps) if steps == 2 else None
    if sprint and intermediate is not None and not 0 < float(intermediate) < max_timesteps:
        raise UsageError(f"--intermediate-timesteps {float(intermediate):g} must lie between 0 and the start "
                         f"({max_timesteps:g})", "give an --intermediate-timesteps below --max-timesteps")
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
        max_timesteps=max_timesteps, intermediate_timesteps=intermediate,
    )
    return request


def check_pag_layers(requests: list, transformer_config: dict, model: str) -> None:
    """PAG perturbs one block's self-attention: a block past the model's last would perturb nothing, silently."""
    blocks = transformer_config.get("num_layers")
    for request in requests:
        if request.pag > 0 and blocks is not None and not request.pag_layers[0] < int(blocks):
            raise UsageError(f"--pag-layer {request.pag_layers[0]} is past {model}'s last block",
                             f"use 0 to {int(blocks) - 1}")


def _default_steps(sampler: str) -> int:
    from sana.sampling import DEFAULT_STEPS

    return DEFAULT_STEPS[sampler]
