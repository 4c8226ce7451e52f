"""Helpers shared by the kernel launchers: device checks and program-count targets."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """True when Triton runs kernels through its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_device(name: str, *tensors: torch.Tensor) -> None:
    """Raise ValueError unless every tensor is on one device that Triton can launch on."""
    device = tensors[0].device
    for t in tensors:
        if t.device != device:
            raise ValueError(f"{name}: all inputs must be on one device, got {device} and {t.device}")
    if device.type != "cuda" and not interpreting():
        raise ValueError(f"{name}: Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 on the CPU), got {device}")


def target_programs(device: torch.device) -> int:
    """Programs to aim for when splitting a reduction: a few waves on a GPU, a handful in the interpreter.

    The interpreter runs programs one after another, so a small target keeps CPU tests fast while still
    exercising more than one split.
    """
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 8


def check_float(name: str, arg: str, t: torch.Tensor) -> None:
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"{name}: {arg} must be float32, float16 or bfloat16, got {t.dtype}")


def check_last_dim_contiguous(name: str, arg: str, t: torch.Tensor) -> None:
    if t.stride(-1) != 1:
        raise ValueError(f"{name}: {arg} must have a contiguous last dim, got strides {tuple(t.stride())}")
