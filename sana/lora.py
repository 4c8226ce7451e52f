"""LoRA files in the diffusers SANA format, merged into the transformer weights at load.

`SanaPipeline.save_lora_weights` writes `transformer.<module>.lora_A.weight` / `lora_B.weight` pairs and, in the
safetensors metadata, the adapter config (`transformer.r`, `transformer.lora_alpha`, `...alpha_pattern`).
Merging: W += scale * (alpha / r) * B @ A, done on the diffusers-named state dict before q/k/v are fused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .errors import SanaError

_PREFIXES = ("transformer.", "base_model.model.", "diffusion_model.")


def _module_name(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def _adapter_config(metadata: dict[str, str] | None) -> dict:
    raw = (metadata or {}).get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return {k.split(".", 1)[1] if k.startswith("transformer.") else k: v for k, v in packed.items()}


def _pattern_value(patterns: dict, module: str, default):
    """peft's rank/alpha patterns: a key matches a module name or a dotted suffix of it (as a regex)."""
    for pattern, value in (patterns or {}).items():
        if re.fullmatch(rf"(.*\.)?{pattern}", module):
            return value
    return default


def read_lora(path: Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor, float]], dict]:
    """module name (diffusers naming) -> (A [r, in], B [out, r], alpha / r)."""
    from safetensors import safe_open

    if path.suffix != ".safetensors":
        raise SanaError(f"{path.name}: LoRA files must be .safetensors", "diffusers' save_lora_weights writes them")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for damaged files
        raise SanaError(f"cannot read LoRA file {path.name}: {exc}") from None
    config = _adapter_config(metadata)
    if config.get("use_dora"):
        raise SanaError(f"{path.name} is a DoRA adapter", "only plain LoRA can be merged")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B|lora_down|lora_up)(?:\.default)?\.weight", key)
        if match:
            kind = "A" if match.group(2) in ("lora_A", "lora_down") else "B"
            pairs.setdefault(_module_name(match.group(1)), {})[kind] = tensor
        elif key.endswith(".alpha"):
            pairs.setdefault(_module_name(key[: -len(".alpha")]), {})["alpha"] = tensor
        else:
            raise SanaError(f"{path.name}: unexpected tensor '{key}'", "not a diffusers-format LoRA file")
    merged = {}
    for module, parts in pairs.items():
        if "A" not in parts or "B" not in parts:
            raise SanaError(f"{path.name}: '{module}' lacks its lora_A or lora_B weight")
        a, b = parts["A"], parts["B"]
        if a.ndim == 4:  # conv LoRA as 1x1
            a, b = a.flatten(1), b.flatten(1)
        rank = a.shape[0]
        if "alpha" in parts:
            alpha = float(parts["alpha"])
        else:
            alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", rank))
            rank = _pattern_value(config.get("rank_pattern"), module, config.get("r", rank)) if config else rank
        merged[module] = (a, b, float(alpha) / float(rank))
    return merged, config


def merge_loras(state: dict[str, torch.Tensor], loras: list[tuple[Path, float]]) -> None:
    """Merge every LoRA into `state` (diffusers names, in place), in fp32 for accuracy."""
    for path, scale in loras:
        modules, _ = read_lora(Path(path))
        for module, (a, b, ratio) in modules.items():
            key = f"{module}.weight"
            if key not in state:
                raise SanaError(f"{Path(path).name}: LoRA target '{module}' is not in this model",
                                "the LoRA was trained for another model")
            weight = state[key]
            delta = (b.float() @ a.float()) * (ratio * scale)
            if delta.shape != weight.shape[: delta.ndim] and delta.numel() != weight.numel():
                raise SanaError(f"{Path(path).name}: LoRA for '{module}' has shape {tuple(delta.shape)}, "
                                f"the model's weight is {tuple(weight.shape)}", "the LoRA was trained for another model")
            state[key] = (weight.float() + delta.reshape(weight.shape)).to(weight.dtype)
