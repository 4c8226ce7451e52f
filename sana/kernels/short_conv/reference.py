"""The symmetric short convolution over frames, in plain PyTorch: SANA-WM's `ShortConvolution` on the keys (fla's
causal depthwise conv1d, weight [C, 1, K]) run forwards and on the reversed frames, minus the centre tap that
both count:

    y[t] = w[K-1] x[t] + sum_{j=1..K-1} w[K-1-j] (x[t-j] + x[t+j])     (zero outside 0 <= t < T)

per spatial token and channel. Activations are token-major [B, N, C], N = T * S in (frame, token) order. The
conv runs in x's dtype through cuDNN, as diffusers' module does, and the three terms are summed there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _causal(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """rows [R, T, C], weight [C, 1, K] -> the causal depthwise conv [R, T, C]."""
    frames, channels = rows.shape[1], rows.shape[2]
    out = F.conv1d(rows.transpose(1, 2), weight.to(rows.dtype), groups=channels,
                   padding=weight.shape[-1] - 1)[..., :frames]
    return out.transpose(1, 2)


def short_conv_reference(x: torch.Tensor, weight: torch.Tensor, frames: int) -> torch.Tensor:
    """x [B, N, C] (any strides), weight [C, 1, K] -> [B, N, C] in x's dtype; each spatial token filtered along
    its own frames."""
    b, n, c = x.shape
    s = n // frames
    rows = x.reshape(b, frames, s, c).permute(0, 2, 1, 3).contiguous().reshape(b * s, frames, c)  # [B*S, T, C]
    out = _causal(rows, weight) + _causal(rows.flip(1), weight).flip(1) - rows * weight[:, 0, -1].to(rows.dtype)
    return out.to(x.dtype).reshape(b, s, frames, c).permute(0, 2, 1, 3).reshape(b, n, c)
