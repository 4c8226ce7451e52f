"""Loading a DiT with fp8 block linears (`sana.models.fp8`) without the device ever holding its bf16 weights.

A plan that keeps the fp8 DiT on the device may have no room for the bf16 one (SANA-1.5 4.8B: ~9.6 GB in bf16,
~5.5 GB with fp8 blocks). So the weights are read to host memory in the compute dtype, each block linear is copied to
the device and quantized there (its bf16 copy freed before the next), and the rest of the model follows: the load's
device peak is the fp8 model plus one bf16 linear. The bits are those of a load onto the device followed by
`quantize_blocks_fp8`: the host casts as the device does, and the quantization is per row and deterministic.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..models.fp8 import quantize_blocks_fp8
from .files import BUILD_LOCK


def load_fp8(load: Callable[[torch.device | str], nn.Module], device: torch.device | str) -> nn.Module:
    """The DiT that `load(where)` reads into `where`'s memory, on `device` with its block linears in fp8.

    On the CPU (the plan keeps the DiT in host memory, or the run is on the CPU) it loads and quantizes there, as
    a load followed by `quantize_blocks_fp8`. Elsewhere it loads to the host, quantizes linear by linear on
    `device`, then moves the norms, embeddings and remaining linears there.
    """
    staged = torch.device(device).type != "cpu"
    transformer = load("cpu" if staged else device)
    with BUILD_LOCK:  # new buffers
        quantize_blocks_fp8(transformer, device=device if staged else None)
    return transformer.to(device) if staged else transformer
