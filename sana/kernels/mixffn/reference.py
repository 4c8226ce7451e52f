"""GLUMBConv's middle in plain PyTorch: the spec the Triton kernel is tested against.

diffusers' GLUMBConv runs conv_inverted -> SiLU -> conv_depth (3x3, groups = channels, zero padding, bias)
-> chunk(2, dim=channels) -> x * silu(gate) -> conv_point on NCHW tensors. Here the activations stay
token-major [B, N, channels] with tokens row-major over (height, width), and the spec is computed in fp32
with one rounding to h's dtype; diffusers rounds after each op in the model dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mixffn_middle_reference(h: torch.Tensor, height: int, width: int, dw_weight: torch.Tensor,
                            dw_bias: torch.Tensor) -> torch.Tensor:
    """h [B, N, 2*Hd] (conv_inverted output before its SiLU, N = height * width) -> [B, N, Hd] in h's dtype.

    dw_weight [2*Hd, 1, 3, 3], dw_bias [2*Hd]. out = d[..., :Hd] * silu(d[..., Hd:]) with
    d = depthwise_conv3x3(silu(h), zero padding) + bias, all in fp32.
    """
    b, n, c2 = h.shape
    x = F.silu(h.float()).transpose(1, 2).reshape(b, c2, height, width)  # [B, 2Hd, H, W]
    x = F.conv2d(x, dw_weight.float(), dw_bias.float(), padding=1, groups=c2)
    x, gate = x.chunk(2, dim=1)  # [B, Hd, H, W] each
    x = x * F.silu(gate)
    return x.flatten(2).transpose(1, 2).to(h.dtype)  # [B, N, Hd]


def mixffn_middle_diffusers(h: torch.Tensor, height: int, width: int, dw_weight: torch.Tensor,
                            dw_bias: torch.Tensor) -> torch.Tensor:
    """The same op as diffusers runs it (NCHW, model dtype, one kernel per step), for benchmarks.

    h [B, N, 2*Hd] -> [B, N, Hd]. The permutes are the ones diffusers' block does around GLUMBConv.
    """
    b, n, c2 = h.shape
    x = h.unflatten(1, (height, width)).permute(0, 3, 1, 2)  # [B, 2Hd, H, W] (channels-last strides)
    x = F.silu(x)
    x = F.conv2d(x, dw_weight, dw_bias, padding=1, groups=c2)
    x, gate = torch.chunk(x, 2, dim=1)
    x = x * F.silu(gate)
    return x.flatten(2, 3).permute(0, 2, 1)  # [B, N, Hd]
