"""DC-AE's multiscale projection in plain PyTorch, as diffusers' `SanaMultiscaleAttentionProjection` computes it on
a channels-last image: a depthwise kxk conv (padding k // 2, no bias) rounded to the input's dtype, then a grouped
1x1 conv (no bias) whose groups are the runs of D consecutive channels (one head's q, k or v).

Activations are token-major here ([B, H*W, C]), as the decoder's attention holds them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def multiscale_projection_reference(x: torch.Tensor, height: int, width: int, dw_weight: torch.Tensor,
                                    pw_weight: torch.Tensor) -> torch.Tensor:
    """x [B, H*W, C], dw_weight [C, 1, k, k], pw_weight [C, D, 1, 1] -> [B, H*W, C] in x's dtype."""
    b, n, c = x.shape
    image = x.reshape(b, height, width, c).permute(0, 3, 1, 2)  # channels-last [B, C, H, W]
    k = dw_weight.shape[-1]
    mid = F.conv2d(image, dw_weight, padding=k // 2, groups=c)
    out = F.conv2d(mid, pw_weight, groups=c // pw_weight.shape[1])
    return out.permute(0, 2, 3, 1).reshape(b, n, c)
