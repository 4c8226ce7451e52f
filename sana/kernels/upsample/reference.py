"""The DC-AE up block's phase assembly in plain PyTorch: the spec the Triton kernel is tested against.

A 3x3 conv after nearest 2x upsampling equals four 2x2 convs of the low-resolution input, one per output phase
(a, b) = (row, column) parity (`sana.models.dcae.nearest_conv_phases`). One 2x2 conv with 4 * Cout outputs and
padding 1 computes all four over (h + 1) x (w + 1) positions; phase (a, b) of output pixel (2i + a, 2j + b) sits at
position (i + a, j + b), channels [(2a + b) * Cout, (2a + b + 1) * Cout). The up block's shortcut (diffusers'
DCUpBlock2d: the input's channels repeated 4 * Cout / Cin times, then pixel-shuffled) adds input channel
(4c + 2a + b) // repeats of pixel (i, j) to output channel c.
"""

from __future__ import annotations

import torch


def shortcut_channels(phase: int, cout: int, repeats: int, device=None) -> torch.Tensor | slice:
    """The input channels the shortcut adds to output channels 0..cout-1 of `phase`: a slice where one exists."""
    if 4 % repeats == 0:
        step = 4 // repeats
        return slice(phase // repeats, phase // repeats + step * cout, step)
    return (4 * torch.arange(cout, device=device) + phase) // repeats


def assemble_phases_reference(y: torch.Tensor, skip: torch.Tensor | None = None,
                              bias: torch.Tensor | None = None) -> torch.Tensor:
    """y [B, 4 * Cout, h + 1, w + 1] (the phase convs), skip None or [B, Cin, h, w], bias None or the phase conv's
    [4 * Cout] (for a conv run without it) -> [B, Cout, 2h, 2w] in y's dtype, channels-last. The sums are taken in
    y's dtype, as the conv's bias add and diffusers' `x + shortcut` are."""
    if bias is not None:
        y = y + bias.to(y.dtype).view(-1, 1, 1)
    b, c4, h1, w1 = y.shape
    cout, h, w = c4 // 4, h1 - 1, w1 - 1
    out = torch.empty(b, cout, 2 * h, 2 * w, device=y.device, dtype=y.dtype, memory_format=torch.channels_last)
    repeats = 4 * cout // skip.shape[1] if skip is not None else 1
    for a in (0, 1):
        for col in (0, 1):
            phase = 2 * a + col
            src = y[:, phase * cout:(phase + 1) * cout, a:a + h, col:col + w]
            dst = out[:, :, a::2, col::2]
            if skip is None:
                dst.copy_(src)
            else:
                dst.copy_(src + skip[:, shortcut_channels(phase, cout, repeats, skip.device)])
    return out
