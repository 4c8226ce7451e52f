"""Choosing the device and the compute dtype (the memory planner refines placement on top of this)."""

from __future__ import annotations

import torch

from .errors import UsageError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but no CUDA GPU is available", "use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for but MPS is not available", "use --device cpu or auto")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise UsageError(f"unknown device '{name}'", "use auto, cuda, cuda:N, mps or cpu")
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """bf16 on GPUs of compute capability >= 8, fp16 below, fp32 on the CPU; an explicit name wins."""
    if name != "auto":
        if name not in DTYPES:
            raise UsageError(f"unknown dtype '{name}'", "use auto, bf16, fp16 or fp32")
        return DTYPES[name]
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32
