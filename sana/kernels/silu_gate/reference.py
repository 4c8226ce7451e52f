"""SANA-WM's attention output gate in plain PyTorch, as diffusers writes it: (x * silu(gate.float())).to(x.dtype).

The product of a half-precision x and the fp32 SiLU is computed in fp32 and rounded once to x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def silu_gate_reference(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x, gate [..., C] of one shape -> x * silu(gate) in fp32, in x's dtype."""
    return (x * F.silu(gate.float())).to(x.dtype)
