"""The model registry: released SANA models as data (one JSON preset a model under `sana/presets/`).

A preset gives everything known about a model without a download: hub repo id, family, native resolution,
parameter counts, per-precision download sizes, the transformer config and the sampling defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ModelNotFound

FAMILIES = ("sana", "sana1.5", "sprint", "video", "wm")
IMAGE_FAMILIES = ("sana", "sana1.5", "sprint")


@dataclass(frozen=True)
class WeightSet:
    """One precision of a model's weights on the hub: the file variant suffix and bytes per component."""

    precision: str  # "fp32" | "fp16" | "bf16"
    variant: str | None  # hub file variant ("fp16" -> *.fp16.safetensors); None for the default files
    bytes: dict[str, int]

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())


@dataclass(frozen=True)
class ModelSpec:
    """A released model: what the registry knows about it."""

    name: str
    repo: str
    family: str
    description: str
    resolution: int
    pipeline: str
    params: dict[str, int]
    transformer: dict[str, Any]
    weights: dict[str, WeightSet]
    defaults: dict[str, Any]
    aliases: tuple[str, ...] = ()
    verified: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def transformer_params(self) -> int:
        return self.params["transformer"]

    @property
    def is_image(self) -> bool:
        return self.family in IMAGE_FAMILIES

    def weight_set(self, precision: str | None = None) -> WeightSet:
        """The weights to fetch for `precision` (default: the preset's recommended dtype, else the first)."""
        if precision is None:
            precision = self.defaults.get("dtype")
        if precision in self.weights:
            return self.weights[precision]
        # fp16 compute from fp32 files, bf16 compute from fp16 files, ...: the smallest set that exists
        return min(self.weights.values(), key=lambda w: w.total_bytes)


@dataclass(frozen=True)
class ModelDefaults:
    """An image model's settings when a request leaves them out: its preset's (a folder outside the registry: the
    ones it carries), its scheduler's flow shift, and those its LoRAs carry; for the CLI, the server and ComfyUI
    alike (`sana_cli.image_settings.model_defaults` resolves them)."""

    steps: int
    cfg: float
    pag: float
    pag_layer: int
    sampler: str
    shift: float
    resolution: int = 1024  # the native side in pixels
    max_timesteps: float = 1.5708
    intermediate_timesteps: float | None = 1.3


@dataclass(frozen=True)
class ClipDefaults:
    """A clip model's settings when a request leaves them out: its preset's (as `sana video` / `sana world`
    resolve them), for the CLI and the server alike."""

    steps: int
    cfg: float
    sampler: str
    i2v_sampler: str
    shift: float
    frames: int
    fps: float
    motion_score: int | None
    width: int
    height: int


def _spec_from_dict(data: dict[str, Any]) -> ModelSpec:
    known = {"name", "repo", "family", "description", "resolution", "pipeline", "params", "transformer",
             "weights", "defaults", "aliases", "verified"}
    weights = {p: WeightSet(p, w.get("variant"), dict(w["bytes"])) for p, w in data["weights"].items()}
    if data["family"] not in FAMILIES:
        raise ValueError(f"preset {data['name']}: unknown family {data['family']!r}")
    return ModelSpec(
        name=data["name"], repo=data["repo"], family=data["family"], description=data["description"],
        resolution=int(data["resolution"]), pipeline=data["pipeline"], params=dict(data["params"]),
        transformer=dict(data["transformer"]), weights=weights, defaults=dict(data["defaults"]),
        aliases=tuple(data.get("aliases", ())), verified=bool(data.get("verified", True)),
        extra={k: v for k, v in data.items() if k not in known},
    )


@lru_cache(maxsize=1)
def all_specs() -> tuple[ModelSpec, ...]:
    """Every preset, in a stable order (family, then size, then resolution)."""
    specs = []
    for entry in resources.files("sana.presets").iterdir():
        if entry.name.endswith(".json"):
            specs.append(_spec_from_dict(json.loads(entry.read_text(encoding="utf-8"))))
    order = {f: i for i, f in enumerate(FAMILIES)}
    return tuple(sorted(specs, key=lambda s: (order[s.family], s.transformer_params, s.resolution, s.name)))


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


@lru_cache(maxsize=1)
def _index() -> dict[str, ModelSpec]:
    index: dict[str, ModelSpec] = {}
    for spec in all_specs():
        keys = {spec.name, spec.repo, spec.repo.split("/")[-1], *spec.aliases}
        for key in keys:
            index[_normalise(key)] = spec
    return index


def find_spec(name: str) -> ModelSpec | None:
    """The preset for a registry name, alias or hub repo id; None when the registry does not know it."""
    return _index().get(_normalise(name))


def get_spec(name: str) -> ModelSpec:
    """Like `find_spec`, but an unknown name is a user error with suggestions."""
    spec = find_spec(name)
    if spec is None:
        import difflib

        from .rewards.models import find_reward_model

        if find_reward_model(name) is not None:  # `sana models list` shows them beside the generating models
            raise ModelNotFound(f"{name} is a reward model, not a model that generates",
                                "reward models score outputs for `sana gen --best-of` and `sana finetune --rl`")

        close = difflib.get_close_matches(_normalise(name), [s.name for s in all_specs()], n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else "see `sana models list`"
        raise ModelNotFound(f"unknown model '{name}'", hint)
    return spec


def find_spec_by_repo(repo_id: str) -> ModelSpec | None:
    for spec in all_specs():
        if spec.repo.lower() == repo_id.lower():
            return spec
    return None


# -- clip models' defaults ----------------------------------------------------------------------------------

ARCHITECTURE_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "in_channels", "sample_size",
                     "patch_size")


def matching_clip_preset(transformer_config: dict):
    """The video preset whose DiT has this folder's architecture (a fine-tune or a retrained nano-video keeps its
    model's clip size and rate), or None."""

    def key(config: dict) -> tuple:
        return tuple(list(v) if isinstance(v, (list, tuple)) else v for v in map(config.get, ARCHITECTURE_KEYS))

    found = [s for s in all_specs() if s.family == "video" and key(s.transformer) == key(transformer_config)]
    return found[0] if found else None


def clip_defaults(spec, scheduler: dict, transformer_config: dict, model_dir: Path | None = None) -> ClipDefaults:
    """The preset's defaults (a local folder: the preset of its architecture, else the released preset of its size
    class, under the settings the folder carries, as an exported fine-tune does), with the model's own scheduler
    file winning for the flow shift (DPM-Solver's `flow_shift`, flow Euler's `shift`)."""
    from .components import folder_sampling_defaults  # imported here: it reads the registry

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
