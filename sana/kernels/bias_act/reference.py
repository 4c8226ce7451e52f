"""A conv's per-channel bias and the activation that follows it, in plain PyTorch, as `F.conv2d(x, w, b)` then
the activation compute them on a half-precision output: the bias added in the output's dtype (one rounding),
then the activation (another).

x is a [B, C, H, W] conv output (channels-last for the kernel) or a [..., C] tensor of rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = {None: lambda t: t, "silu": F.silu, "swish": F.silu, "relu": F.relu}


def bias_activation_reference(x: torch.Tensor, bias: torch.Tensor, act: str | None) -> torch.Tensor:
    """x [B, C, H, W] or [..., C], bias [C], act None / "silu" / "swish" / "relu" -> act(x + bias) in x's dtype (a
    new tensor)."""
    per_channel = bias.to(x.dtype).view(-1, 1, 1) if x.dim() == 4 else bias.to(x.dtype)
    return ACTIVATIONS[act](x + per_channel)
