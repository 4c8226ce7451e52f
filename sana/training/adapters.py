"""LoRA adapters on our DiT through peft, named and saved the way diffusers names and saves SANA LoRAs.

Our DiT fuses q/k/v (and cross-attention k/v) into one projection. For training, `split_fused_projections`
turns each fused linear into a `SplitProjection` with one child linear a part (`to_q`, `to_k`, `to_v`), so a
LoRA on `to_q` is a LoRA on q alone, exactly as in diffusers' `SanaTransformer2DModel`. Targets are given in
diffusers' module names ("to_q", "attn1.to_out.0", "conv_inverted", ...) and matched the way peft matches them
(a name or a dotted suffix of it).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import UsageError
from ..loading import engine_to_diffusers_name, is_pointwise_conv
from ..lora import BASE_CLASS_METADATA_KEY, LORA_WEIGHTS_NAME, SAMPLING_METADATA_KEY

# diffusers' train_dreambooth_lora_sana.py default: q, k and v of both attentions.
DEFAULT_TARGETS = ("to_q", "to_k", "to_v")


class SplitProjection(nn.Module):
    """A fused projection [q | k | v] as one linear a part; the output is their concatenation, as before."""

    def __init__(self, fused: nn.Linear, names: tuple[str, ...]):
        super().__init__()
        self.names = names
        weights = fused.weight.detach().chunk(len(names), dim=0)
        biases = fused.bias.detach().chunk(len(names), dim=0) if fused.bias is not None else [None] * len(names)
        for name, weight, bias in zip(names, weights, biases):
            part = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
            part.weight = nn.Parameter(weight.clone(), requires_grad=fused.weight.requires_grad)
            if bias is not None:
                part.bias = nn.Parameter(bias.clone(), requires_grad=fused.bias.requires_grad)
            setattr(self, name, part)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([getattr(self, name)(x) for name in self.names], dim=-1)


def split_fused_projections(model: nn.Module) -> nn.Module:
    """Replace every block's fused `attn.qkv` and `cross_attn.kv` by `SplitProjection`s (in place)."""
    for block in model.blocks:
        if isinstance(block.attn.qkv, nn.Linear):
            block.attn.qkv = SplitProjection(block.attn.qkv, ("to_q", "to_k", "to_v"))
        if isinstance(block.cross_attn.kv, nn.Linear):
            block.cross_attn.kv = SplitProjection(block.cross_attn.kv, ("to_k", "to_v"))
    return model


def lora_candidates(model: nn.Module) -> dict[str, str]:
    """Engine module name -> diffusers module name, for every linear a LoRA can wrap."""
    guidance = bool(model.config.guidance_embeds)
    return {name: engine_to_diffusers_name(f"{name}.weight", guidance)[: -len(".weight")]
            for name, module in model.named_modules() if isinstance(module, nn.Linear)}


def resolve_targets(model: nn.Module, targets: list[str]) -> dict[str, str]:
    """The engine modules (-> diffusers names) that `targets` (diffusers names or dotted suffixes) select."""
    candidates = lora_candidates(model)
    chosen: dict[str, str] = {}
    for target in targets:
        target = target.strip()
        hits = {e: d for e, d in candidates.items() if d == target or d.endswith("." + target)}
        if not hits:
            examples = "to_q, to_k, to_v, to_out.0, conv_inverted, conv_point, attn1.to_q, proj_out"
            raise UsageError(f"LoRA target '{target}' matches no layer of this model", f"use diffusers names such as {examples}")
        chosen.update(hits)
    return chosen


def add_lora(model: nn.Module, *, rank: int, alpha: float, targets: list[str], dropout: float = 0.0):
    """Split fused projections, inject peft LoRA layers on `targets`, freeze everything else.

    Returns the peft `LoraConfig` in diffusers' naming (what the saved file's metadata carries).
    """
    from peft import LoraConfig, inject_adapter_in_model

    split_fused_projections(model)
    chosen = resolve_targets(model, targets)
    engine_config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                               target_modules=sorted(chosen))
    inject_adapter_in_model(engine_config, model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                      target_modules=sorted(set(chosen.values())))


def lora_state_dict(model: nn.Module, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """The LoRA tensors in diffusers' naming (without the `transformer.` prefix save_lora_weights adds).

    `scale` multiplies every B: saving with scale = alpha / r and alpha = r gives the same update in every
    loader, including those that ignore the adapter metadata and take alpha = r.
    """
    from peft.utils import get_peft_model_state_dict

    guidance = bool(model.config.guidance_embeds)
    out = {}
    for key, tensor in get_peft_model_state_dict(model).items():
        module, _, kind = key.rpartition(".lora_")  # "<module>", "A.weight" | "B.weight"
        name = engine_to_diffusers_name(f"{module}.weight", guidance)[: -len(".weight")]
        tensor = tensor.detach().to("cpu", torch.float32)
        if kind.startswith("B"):
            tensor = tensor * scale
        if is_pointwise_conv(name + ".") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # diffusers' conv_inverted / conv_point are 1x1 Conv2d
        out[f"{name}.lora_{kind}"] = tensor.contiguous()
    return out


def save_lora(model: nn.Module, config, folder: Path, dtype: torch.dtype = torch.float32,
              sampling_defaults: dict | None = None) -> Path:
    """Write `pytorch_lora_weights.safetensors` into `folder` with diffusers' own writer, atomically.

    alpha / r is folded into B and the metadata says alpha = r, so every loader applies the same update.
    `sampling_defaults` (settings the LoRA should sample with where they differ from its base's) go into the
    file's metadata too (`lora.SAMPLING_METADATA_KEY`), which `sana gen --lora` reads and other loaders ignore.
    """
    import dataclasses

    from diffusers import SanaPipeline

    folder.mkdir(parents=True, exist_ok=True)
    layers = {k: v.to(dtype) for k, v in lora_state_dict(model, scale=config.lora_alpha / config.r).items()}
    saved_config = dataclasses.replace(config, lora_alpha=config.r)
    extra = {BASE_CLASS_METADATA_KEY: _diffusers_class_name(model)}
    if sampling_defaults:
        extra[SAMPLING_METADATA_KEY] = json.dumps(sampling_defaults)
    adapter = saved_config.to_dict()
    for key, value in adapter.items():  # peft keeps module names in sets: their order follows the process's hash seed
        if isinstance(value, (set, frozenset)):
            adapter[key] = sorted(value)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".lora-") as tmp:
        SanaPipeline.save_lora_weights(tmp, transformer_lora_layers=layers,
                                       transformer_lora_adapter_metadata=adapter)
        _add_metadata(Path(tmp) / LORA_WEIGHTS_NAME, extra)
        os.replace(Path(tmp) / LORA_WEIGHTS_NAME, folder / LORA_WEIGHTS_NAME)
    return folder / LORA_WEIGHTS_NAME


def _diffusers_class_name(model: nn.Module) -> str:
    """The diffusers class of the transformer being trained, which the LoRA records (`lora.BASE_CLASS_METADATA_KEY`)."""
    from ..loading.video import VIDEO_CLASS_NAME
    from ..models import SanaVideoTransformer

    return VIDEO_CLASS_NAME if isinstance(getattr(model, "module", model), SanaVideoTransformer) else "SanaTransformer2DModel"


def _add_metadata(path: Path, extra: dict[str, str]) -> None:
    """Rewrite a safetensors file with `extra` added to its metadata (the tensors unchanged)."""
    from safetensors import safe_open
    from .checkpoint import save_safetensors

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    save_safetensors(tensors, path, metadata={**metadata, **extra})
