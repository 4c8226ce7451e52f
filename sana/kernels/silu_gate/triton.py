"""SANA-WM's output gate as one elementwise Triton pass.

diffusers' form (`reference.py`) upcasts the gate to an fp32 copy, runs SiLU into another, multiplies into a
third and rounds it back: four passes and three fp32 tensors the size of the activations, for every block. Here
each program reads BLOCK elements of x and of the gate and writes the rounded product once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float


@triton.jit
def _silu_gate_kernel(x_ptr, g_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    out = x * (g / (1.0 + tl.exp(-g)))  # silu(g) = g * sigmoid(g)
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


_BLOCK = 4096


def silu_gate(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x * silu(gate) in fp32, rounded once to x's dtype; the spec is `reference.silu_gate_reference`.

    Args:
        x, gate: tensors of one shape, both contiguous (fp32, fp16 or bf16; their dtypes may differ).

    Returns:
        A contiguous tensor of x's shape and dtype.
    """
    name = "silu_gate"
    if x.shape != gate.shape:
        raise ValueError(f"{name}: x {tuple(x.shape)} and gate {tuple(gate.shape)} must have one shape")
    if not (x.is_contiguous() and gate.is_contiguous()):
        raise ValueError(f"{name}: x and gate must be contiguous")
    check_float(name, "x", x)
    check_float(name, "gate", gate)
    check_device(name, x, gate)
    out = torch.empty_like(x)
    if out.numel():
        _silu_gate_kernel[(triton.cdiv(x.numel(), _BLOCK),)](x, gate, out, x.numel(), BLOCK=_BLOCK, num_warps=8)
    return out
