"""Pieces the video DiTs share (SANA-Video, SANA-WM): the 3D rotary tables of Wan's RoPE and the Mix-FFN with
temporal mixing (GLUMBTempConv), both on token-major activations [B, N, D] with tokens ordered (frame, row, col).
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops


# -- rotary position embedding ------------------------------------------------------------------------------

def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """(t, h, w) channels of a head, as Wan splits them: h = w = 2 * (d // 6), t the rest (d=112 -> 40/36/36)."""
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head dim, got {head_dim}")
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _axis_angles(dim: int, length: int, theta: float) -> torch.Tensor:
    """[length, dim / 2] float64 angles position * theta^(-2i/dim), as diffusers' get_1d_rotary_pos_embed."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))  # [dim/2]
    return torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)


def rope_tables(head_dim: int, frames: int, height: int, width: int, *, max_len: int = 1024,
                theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables (cos, sin), each [frames * height * width, head_dim] fp32, for the token grid in (frame, row,
    col) order. Channels are [t | h | w] (see `rope_axis_dims`); each pair's value fills both of its channels
    (interleaved pairs). Angles in float64, cos/sin rounded once to fp32: diffusers' WanRotaryPosEmbed buffers.

    Pure function of its arguments: callers cache the result per grid.
    """
    if max(frames, height, width) > max_len:
        raise ValueError(f"token grid {frames}x{height}x{width} exceeds the rotary table length {max_len}")
    n = frames * height * width
    cos_parts, sin_parts = [], []
    for axis, (dim, length) in enumerate(zip(rope_axis_dims(head_dim), (frames, height, width))):
        angles = _axis_angles(dim, length, theta)  # [length, dim/2]
        shape = [1, 1, 1, dim]
        shape[axis] = length
        for trig, parts in ((torch.cos, cos_parts), (torch.sin, sin_parts)):
            table = trig(angles).repeat_interleave(2, dim=1).float()  # [length, dim], pairs interleaved
            parts.append(table.view(shape).expand(frames, height, width, dim))
    cos = torch.cat(cos_parts, dim=-1).reshape(n, head_dim)  # [N, D]
    sin = torch.cat(sin_parts, dim=-1).reshape(n, head_dim)
    return cos, sin


# -- feed-forward -------------------------------------------------------------------------------------------

class TemporalMixFFN(nn.Module):
    """GLUMBTempConv on token-major activations: per frame 1x1 (as linear) -> SiLU -> depthwise 3x3 -> GLU ->
    1x1 (as linear), then a residual temporal conv over frames, y + conv_(3,1)(y), zero padded at both ends (`branch_terms`
    gives the two terms apart, for a caller that adds them inside its residual).

    The 1x1 convs are linears ([O, I] instead of [O, I, 1, 1]) so the tokens stay [B, N, C] for them; only the
    depthwise conv needs the spatial layout, inside `ops.mixffn_middle`. `temporal` keeps diffusers' Conv2d shape
    [C, C, 3, 1] so checkpoints load as they are; `sana.kernels.temporal_conv` says how it runs on token-major data.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.inverted = nn.Linear(dim, 2 * hidden)
        self.depthwise = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.point = nn.Linear(hidden, dim, bias=False)
        self.temporal = nn.Conv2d(dim, dim, (3, 1), padding=(1, 0), bias=False)

    def forward(self, x: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """x [B, N, D] (N = frames * height * width, (frame, row, col) order) -> [B, N, D]."""
        y, mixed = self.branch_terms(x, frames, height, width)
        return y if mixed is None else y + mixed

    def branch_terms(self, x: torch.Tensor, frames: int, height: int,
                     width: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The two terms of the output, y and conv_(3,1)(y), each [B, N, D], so the block's gated residual adds
        them in its own pass (the sum rounded as diffusers rounds it on the reference path); or (y + conv(y), None)
        where the Triton implicit GEMM makes the sum in one pass (`ops.temporal_conv_plus_input`)."""
        b, n, dim = x.shape
        hw = height * width
        h = self.inverted(x)  # [B, N, 2Hd]
        h = ops.mixffn_middle(h.reshape(b * frames, hw, -1), height, width, self.depthwise.weight,
                              self.depthwise.bias)  # [B*F, HW, Hd], every frame on its own grid
        y = self.point(h).reshape(b, n, dim)  # [B, N, D]
        summed = ops.temporal_conv_plus_input(y, self.temporal.weight, hw, lambda: self._packed_temporal(y.dtype))
        if summed is not None:
            return summed, None
        return y, ops.temporal_conv(y, self.temporal.weight, hw)

    def _packed_temporal(self, dtype: torch.dtype) -> torch.Tensor:
        """The temporal weight in the implicit GEMM's layout [3, D, D], packed once per weight tensor and version
        (a LoRA merge or a load bumps the version)."""
        from ..kernels.temporal_conv.reference import pack_weight

        weight = self.temporal.weight
        key = (weight.data_ptr(), weight._version, weight.device, dtype)
        cached = getattr(self, "_packed_cache", None)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                cached = (key, pack_weight(weight).to(dtype))
            self._packed_cache = cached
        return cached[1]
