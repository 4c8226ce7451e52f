"""Loading the components beside the DiT: the DC-AE (our decoder to generate, diffusers' whole autoencoder to
encode), scheduler config, model index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SanaError

if TYPE_CHECKING:  # no torch at import: the CLI reads configs with these helpers before torch loads
    import torch

COMPONENTS = ("transformer", "text_encoder", "tokenizer", "vae", "scheduler")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SanaError(f"missing file {path}", "the model directory is incomplete; pull it again") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SanaError(f"{path} is not valid JSON ({exc})") from None


def model_index(model_dir: Path) -> dict:
    path = model_dir / "model_index.json"
    return read_json(path) if path.exists() else {}


# model_index.json's entry for the sampling defaults a model folder carries (fine-tuned and RL-aligned models
# remember how they are meant to be sampled); diffusers reads no key that starts with "_".
SAMPLING_DEFAULTS_KEY = "_sana_defaults"


def folder_sampling_defaults(model_dir: Path) -> dict:
    """The sampling defaults a model folder carries (steps, guidance, sampler, ...), {} when it carries none."""
    value = model_index(model_dir).get(SAMPLING_DEFAULTS_KEY, {})
    if not isinstance(value, dict):
        raise SanaError(f"{model_dir / 'model_index.json'}: {SAMPLING_DEFAULTS_KEY} is not a table of settings")
    return value


def family_from_index(index: dict) -> str | None:
    """The model family a diffusers pipeline class implies."""
    name = index.get("_class_name", "")
    if "Sprint" in name:
        return "sprint"
    if "Video" in name:
        return "video"
    if "WM" in name:
        return "wm"
    if name.startswith("Sana"):
        return "sana"
    return None


def require_component(model_dir: Path, name: str) -> Path:
    path = model_dir / name
    if not path.is_dir():
        raise SanaError(f"{model_dir} has no {name}/ folder", f"a SANA pipeline needs {', '.join(COMPONENTS)}")
    return path


def check_components(model_dir: Path) -> None:
    """Every folder an image pipeline loads is there (before anything slow starts)."""
    for name in ("transformer", "text_encoder", "tokenizer", "vae"):
        require_component(model_dir, name)


def component_variant(component_dir: Path, variant: str | None) -> str | None:
    """`variant` when the folder has files of that variant (e.g. model.bf16.safetensors), else None."""
    if not variant:
        return None
    for f in component_dir.iterdir():
        parts = f.name.split(".")
        if f.name.endswith((".safetensors", ".json")) and (variant in parts or any(p.startswith(variant + "-") for p in parts)):
            if f.name != "config.json":
                return variant
    return None


def scheduler_config(model_dir: Path) -> dict:
    path = model_dir / "scheduler" / "scheduler_config.json"
    return read_json(path) if path.exists() else {}


def load_vae(model_dir: Path, *, dtype: torch.dtype, device: torch.device | str, variant: str | None = None):
    """Our DC-AE decoder (`sana.models.dcae.DCAEDecoder`) from `vae/`: all that generating needs, without diffusers."""
    from .loading import load_vae_decoder

    vae_dir = require_component(model_dir, "vae")
    return load_vae_decoder(vae_dir, dtype=dtype, device=device, variant=variant)


def load_autoencoder(model_dir: Path, *, dtype: torch.dtype, device: torch.device | str, variant: str | None = None):
    """diffusers' whole AutoencoderDC from `vae/`, for encoding images (training latents)."""
    from diffusers import AutoencoderDC

    from .loading.files import BUILD_LOCK

    vae_dir = require_component(model_dir, "vae")
    try:
        with BUILD_LOCK:
            vae = AutoencoderDC.from_pretrained(vae_dir, torch_dtype=dtype, variant=component_variant(vae_dir, variant))
    except (OSError, ValueError, RuntimeError) as exc:
        raise SanaError(f"cannot load the VAE from {vae_dir}: {str(exc).splitlines()[0]}") from None
    return vae.to(device).eval()


def clip_model_configs(resolved, spec) -> tuple[dict, dict]:
    """(transformer config, VAE config) from the model folder, else the preset."""
    from .hub import transformer_config

    if resolved is not None:
        return transformer_config(resolved.path), read_json(resolved.path / "vae" / "config.json")
    return spec.transformer, spec.extra.get("vae", {})
