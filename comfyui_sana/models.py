"""SANA_MODEL: a model chosen in a graph (with its LoRAs), resolved when the graph is checked and loaded on first use.

A handle is cheap: the Model Loader and LoRA nodes only say which weights, precision and memory tier; the first node
that needs the pipeline loads it the way `sana gen` does (resolve without downloading, plan memory for the
device, load each component where the plan keeps it, LoRAs merged at load) and keeps it while it is the last model
used. One model at a time is resident, because the memory plan counts the whole device for it.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sana.errors import SanaError, UsageError

from sana_cli.generation import DTYPE_CHOICES as DTYPES
from sana_cli.generation import FAMILY_NAMES

from . import host

IMAGE_FAMILIES = ("sana", "sana1.5", "sprint")


def model_choices() -> list[str]:
    """The Loader's list: every registry model, SANA pipelines downloaded under other hub ids, then the model
    folders in ComfyUI's models/sana."""
    from sana.hub import list_models
    from sana.registry import all_specs

    names = [spec.name for spec in all_specs()]
    names += [e.name for e in list_models() if e.spec is None and e.status == "yes" and e.name not in names]
    return names + [name for name in host.model_folders() if name not in names]


def default_model() -> str:
    """The best downloaded image model (`sana gen`'s order), else the built-in nano model."""
    from sana.hub import list_models

    from sana_cli.generation import PREFERRED

    ready = {e.name for e in list_models() if e.status == "yes"}
    return next((name for name in PREFERRED["gen"] if name in ready), "nano")


@dataclass(frozen=True)
class SanaModel:
    """What a Loader (and the LoRA nodes after it) chose; `pipeline()` loads it."""

    name: str  # as the graph gave it: a registry name, a hub id or a folder
    path: Path
    family: str
    repo: str | None
    revision: str | None
    spec: Any  # sana.registry.ModelSpec or None (a folder or an unregistered hub id)
    dtype: str = "auto"
    memory: str = "auto"
    loras: tuple[tuple[Path, float], ...] = ()
    _derived: dict = field(default_factory=dict, compare=False, repr=False)  # defaults and sizes, read once

    @property
    def key(self) -> tuple:
        return (str(self.path), self.dtype, self.memory, tuple((str(p), s) for p, s in self.loras))

    @property
    def record_name(self) -> str:
        """The model as a file's record names it, so `sana gen --from` finds it: a registry name or hub id as
        given, a folder (ComfyUI's models/sana ones included, which the graph names by folder name) by its
        absolute path."""
        return self.name if self.spec is not None or self.repo else str(Path(self.path).resolve())

    def with_lora(self, path: Path, strength: float) -> "SanaModel":
        """This model with one more LoRA merged at load (image and video models)."""
        self.require(*IMAGE_FAMILIES, "video", node="Sana LoRA")
        return replace(self, loras=(*self.loras, (path, float(strength))), _derived={})

    def lora_records(self) -> list[dict]:
        """The LoRAs as `sana gen` records them: path, scale and the file's sha256."""
        if "loras" not in self._derived:
            from sana.outputs import file_sha256

            self._derived["loras"] = [{"path": str(path), "scale": scale, "sha256": file_sha256(path)}
                                      for path, scale in self.loras]
        return [dict(entry) for entry in self._derived["loras"]]

    def require(self, *families: str, node: str) -> None:
        """A one-line error when `node` does not take this model's family."""
        if self.family not in families:
            takes = " or ".join(dict.fromkeys(FAMILY_NAMES[f] for f in families))
            raise UsageError(f"{self.name} is {FAMILY_NAMES.get(self.family, self.family)}; {node} takes {takes}")

    # -- what the CLI reads before loading ------------------------------------------------------------------

    def sizes(self):
        if "sizes" not in self._derived:
            from sana_cli.generation import component_sizes

            self._derived["sizes"] = component_sizes(self._resolved(), self.spec, None)
        return self._derived["sizes"]

    def image_defaults(self):
        """`sana gen`'s defaults for this model (steps, guidance, PAG layer, sampler, shift, native size)."""
        if "image" not in self._derived:
            from sana.components import scheduler_config

            from sana_cli.image_settings import model_defaults

            self._derived["image"] = model_defaults(self.spec, scheduler_config(self.path), self.family,
                                                    self.sizes().native_resolution, self.path)
        return self._derived["image"]

    def video_defaults(self):
        if "video" not in self._derived:
            from sana.components import scheduler_config
            from sana.hub import transformer_config

            from sana.registry import clip_defaults

            self._derived["video"] = clip_defaults(self.spec, scheduler_config(self.path),
                                                   transformer_config(self.path), self.path)
        return self._derived["video"]

    def world_defaults(self):
        if "world" not in self._derived:
            from sana.components import scheduler_config

            from sana_cli.world import world_defaults

            self._derived["world"] = world_defaults(self.spec, scheduler_config(self.path))
        return self._derived["world"]

    def _resolved(self):
        from sana.hub import ResolvedModel

        return ResolvedModel(path=self.path, spec=self.spec, repo=self.repo, revision=self.revision, source="comfyui")

    # -- memory plan and load ----------------------------------------------------------------------------------

    def plan(self, work):
        """The memory plan for `work` (a sana.memory.Workload) on ComfyUI's device, with this handle's dtype and
        tier; the VAE's dtype as `sana video` picks it (the model's recommended one where that costs nothing but
        memory)."""
        from sana.device import probe_device
        from sana.memory import plan_memory

        plan = plan_memory(probe_device(self.device()), self.sizes(), work, mode=self.memory, dtype=self.dtype,
                           vae_dtype="auto")
        if self.family == "wm":
            plan = replace(plan, cuda_graphs=False)  # the world DiT's step is not graph-captured
        return plan

    def check_fits(self, work, what: str) -> None:
        """A one-line error when `what` cannot fit in memory on this device whatever the tier."""
        plan = self.plan(work)
        if not plan.fits:
            raise SanaError(f"{what} does not fit in memory here: {plan.notes()[0]}",
                            "use a smaller size, batch or frame count, or a lower memory tier")

    def device(self):
        from sana.device import pick_device

        return host.torch_device() or pick_device("auto")

    def pipeline(self):
        """The loaded pipeline (ImagePipeline, VideoPipeline or WorldPipeline), loaded now unless it is the one
        loaded last."""
        global _loaded
        if _loaded is not None and _loaded[0] == self.key:
            return _loaded[1]
        unload()
        host.free_device_memory()
        start = time.perf_counter()
        pipe = self._load()
        host.log.info("sana: loaded %s (%s, %s) in %.1f s", self.name, pipe.plan.summary(), pipe.device,
                      time.perf_counter() - start)
        _loaded = (self.key, pipe)
        return pipe

    def video_binned(self, width: int, height: int) -> tuple[int, int]:
        """The trained aspect bin a video model generates (width, height) at."""
        from sana.hub import transformer_config
        from sana.pipelines.sizes import video_binned_size

        return video_binned_size(width, height, int(transformer_config(self.path).get("sample_size", 0)))

    def _load(self):
        """`sana gen` / `sana video` / `sana world`'s load, planned for one output of the model's default size
        (a larger request is checked against a plan of its own first: `check_fits`)."""
        from sana.device import DTYPES as TORCH_DTYPES
        from sana.memory import Workload
        from sana_cli.generation import weights_variant

        device = self.device()
        if self.family in IMAGE_FAMILIES:
            from sana.pipelines.image import ImagePipeline

            native = self.sizes().native_resolution
            rows = 1 if self.family == "sprint" else 3  # CFG and PAG rows: a graph may turn either on
            plan = self.plan(Workload(native, native, images=1, rows=rows))
            return ImagePipeline.from_pretrained(self.path, dtype=TORCH_DTYPES[plan.dtype], device=device,
                                                 family=self.family, variant=weights_variant(self.spec, plan),
                                                 loras=list(self.loras), plan=plan)
        if self.family == "video":
            from sana.pipelines.video import VideoPipeline

            d = self.video_defaults()
            plan = self.plan(Workload(*self.video_binned(d.width, d.height), images=1, rows=2, frames=d.frames))
            return VideoPipeline.from_pretrained(self.path, dtype=TORCH_DTYPES[plan.dtype], device=device,
                                                 variant=weights_variant(self.spec, plan), plan=plan,
                                                 loras=list(self.loras))
        from sana.pipelines.world import WorldPipeline

        d = self.world_defaults()
        plan = self.plan(Workload(d.width, d.height, images=1, rows=2, frames=d.frames, conditioned=True))
        return WorldPipeline.from_pretrained(self.path, dtype=TORCH_DTYPES[plan.dtype], device=device,
                                             variant=weights_variant(self.spec, plan), plan=plan)


_loaded: tuple[tuple, Any] | None = None  # (SanaModel.key, pipeline) of the model loaded last
_refiner: tuple[tuple, Any] | None = None  # ((folder, id of its world pipeline), WorldRefiner)


def world_refiner(folder: Path, pipe):
    """SANA-WM's stage 2 from `folder`, in the world pipeline's dtype on its device: loaded on first use and kept
    while that pipeline stays loaded (`unload` drops both)."""
    global _refiner
    if _refiner is not None and _refiner[0] == (folder, id(pipe)):
        return _refiner[1]
    from sana.pipelines.world_refiner import WorldRefiner

    _refiner = None
    refiner = WorldRefiner.load(folder, dtype=pipe.dtype, device=pipe.device)
    _refiner = ((folder, id(pipe)), refiner)
    return refiner


def unload() -> None:
    """Drop the loaded pipeline (and its refiner) and give its memory back."""
    global _loaded, _refiner
    _refiner = None
    if _loaded is None:
        return
    _loaded = None
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def choose(model: str, dtype: str = "auto", memory: str = "auto") -> SanaModel:
    """The handle for a Loader's inputs. `model`: a registry name, a downloaded hub id (org/name), a folder in
    ComfyUI's models/sana, or a model folder's path. Nothing is downloaded: a model that is not on disk is a
    one-line error naming the `sana models pull` that gets it."""
    from sana.components import check_components, family_from_index, model_index
    from sana.hub import resolve_model
    from sana.memory import check_mode

    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{dtype}'", f"use {', '.join(DTYPES)}")
    check_mode(memory)
    if not model.strip():
        raise UsageError("no model given", "choose one in the list")
    folder = host.model_folders().get(model)
    resolved = resolve_model(str(folder) if folder is not None else model.strip())
    family = (resolved.spec.family if resolved.spec else None) or family_from_index(model_index(resolved.path))
    if family is None:
        raise SanaError(f"{model} is not a SANA pipeline (its model_index.json names no SANA class)")
    check_components(resolved.path)
    return SanaModel(name=model, path=resolved.path, family=family, repo=resolved.repo, revision=resolved.revision,
                     spec=resolved.spec, dtype=dtype, memory=memory)
