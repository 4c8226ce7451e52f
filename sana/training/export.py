"""Writing a fully fine-tuned DiT as a diffusers-format model folder (usable as `sana gen --model DIR`)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from ..components import SAMPLING_DEFAULTS_KEY
from ..loading import VIDEO_CLASS_NAME, WEIGHTS_NAME, engine_to_diffusers, video_engine_to_diffusers
from .checkpoint import replace_folder, save_safetensors

OTHER_COMPONENTS = ("vae", "text_encoder", "tokenizer", "scheduler")


def _link_or_copy(source: Path, target: Path) -> None:
    """Hard-link files (no second copy of a 5 GB text encoder on the same disk), else copy them."""
    if source.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        for child in source.iterdir():
            _link_or_copy(child, target / child.name)
        return
    real = source.resolve()  # hub caches hold symlinks into blobs/
    try:
        os.link(real, target)
    except OSError:
        shutil.copy2(real, target)


def _set_flow_shift(path: Path, flow_shift: float) -> None:
    """Set a staged scheduler config's flow shift. The staged file may be a hard link to the base's: it is
    replaced, never written through."""
    if not path.is_file():
        return
    scheduler = json.loads(path.read_text(encoding="utf-8"))
    if scheduler.get("flow_shift") == flow_shift:
        return
    scheduler["flow_shift"] = flow_shift
    path.unlink()
    path.write_text(json.dumps(scheduler, indent=2) + "\n", encoding="utf-8")


def _is_video(config) -> bool:
    from ..models.video_transformer import VideoTransformerConfig

    return isinstance(config, VideoTransformerConfig)


def transformer_config_json(config, base_dir: Path) -> dict:
    """The base model's transformer config.json (unknown keys kept) with our config's values."""
    from importlib import metadata

    path = base_dir / "transformer" / "config.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data.update(dataclasses.asdict(config))
    data["_class_name"] = VIDEO_CLASS_NAME if _is_video(config) else "SanaTransformer2DModel"
    try:  # read, not imported: exporting needs no diffusers (the base's version is kept without it)
        data["_diffusers_version"] = metadata.version("diffusers")
    except metadata.PackageNotFoundError:
        data.setdefault("_diffusers_version", "0.32.0")
    return data


def save_model_folder(weights: dict[str, torch.Tensor], config, base_dir: Path, target: Path,
                      dtype: torch.dtype, sampling_defaults: dict | None = None,
                      flow_shift: float | None = None) -> Path:
    """transformer/ from `weights` (engine names), the other components from `base_dir`; assembled beside
    `target` and renamed into place, so an interrupted export never leaves a half-written model.
    `sampling_defaults` go into model_index.json (`components.SAMPLING_DEFAULTS_KEY`) for `sana gen` to use;
    `flow_shift` (the sampler a reward fine-tune was aligned for) into the scheduler's config, where `sana gen` and
    diffusers read it."""

    staged = target.with_name(f".{target.name}.partial")
    shutil.rmtree(staged, ignore_errors=True)
    (staged / "transformer").mkdir(parents=True)
    to_diffusers = video_engine_to_diffusers if _is_video(config) else engine_to_diffusers
    state = to_diffusers({k: v.detach().to("cpu", dtype).contiguous() for k, v in weights.items()},
                         bool(config.guidance_embeds))
    save_safetensors(state, staged / "transformer" / WEIGHTS_NAME, metadata={"format": "pt"})
    (staged / "transformer" / "config.json").write_text(
        json.dumps(transformer_config_json(config, base_dir), indent=2), encoding="utf-8")
    for name in OTHER_COMPONENTS:
        if (base_dir / name).is_dir():
            _link_or_copy(base_dir / name, staged / name)
    if flow_shift is not None:
        _set_flow_shift(staged / "scheduler" / "scheduler_config.json", flow_shift)
    if (base_dir / "model_index.json").is_file():
        index = json.loads((base_dir / "model_index.json").read_text(encoding="utf-8"))
        if sampling_defaults:
            index[SAMPLING_DEFAULTS_KEY] = sampling_defaults
        (staged / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    replace_folder(staged, target)  # an earlier export of this run (a resumed run finishing again) is replaced
    return target
