"""The memory options: `--memory` tiers and `--max-vram` sizes (no torch: the CLI checks them first)."""

from __future__ import annotations

import re

from ..units import GiB
from ..errors import UsageError

TIERS = ("high", "balanced", "low", "minimal")
MODES = ("auto", *TIERS)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)
_UNITS = {"": GiB, "k": 1 << 10, "m": 1 << 20, "g": GiB, "t": 1 << 40}


def parse_memory_size(text: str) -> int:
    """`--max-vram`: `8G`, `8GB`, `7.5GiB`, `6000M` -> bytes; binary units, and a bare number means GiB."""
    match = _SIZE.fullmatch(str(text).strip())
    if not match:
        raise UsageError(f"cannot read --max-vram '{text}'", "use e.g. 8G, 7.5GiB or 6000M (binary units)")
    value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 256 << 20:
        raise UsageError(f"--max-vram {text} is too small", "sana needs at least 256 MiB of GPU memory")
    return int(value)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UsageError(f"unknown memory mode '{mode}'", f"use {', '.join(MODES)}")
    return mode
