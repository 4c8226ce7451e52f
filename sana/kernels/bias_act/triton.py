"""A conv's bias and the activation after it as one Triton pass, in place.

PyTorch's cuDNN convolution adds its bias in a pass of its own after the conv, and the activation is another: two
reads and two writes of the DC-AE decoder's largest tensors (the ResBlocks' first conv at full resolution). Here
the conv runs without its bias and one program a [BLOCK_R rows, BLOCK_C channels] tile adds the bias and applies
the activation in fp32, writing the result once over the conv's output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._common import check_device, check_float

ACT_CODES = {None: 0, "silu": 1, "swish": 1, "relu": 2}


@triton.jit
def _bias_activation_kernel(x_ptr, bias_ptr, rows, C, ACT: tl.constexpr, BLOCK_R: tl.constexpr,
                            BLOCK_C: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (r < rows)[:, None] & (c < C)[None, :]
    offs = r.to(tl.int64)[:, None] * C + c[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    x += tl.load(bias_ptr + c, mask=c < C, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:
        x = x / (1.0 + tl.exp(-x))
    elif ACT == 2:
        x = tl.maximum(x, 0.0)
    tl.store(x_ptr + offs, x.to(x_ptr.dtype.element_ty), mask=mask)


_BLOCK_R, _BLOCK_C = 32, 128


def bias_activation(x: torch.Tensor, bias: torch.Tensor, act: str | None) -> torch.Tensor:
    """act(x + bias) written over x, computed in fp32 and rounded once; the spec is
    `reference.bias_activation_reference` (which rounds twice, as the unfused passes do).

    Args:
        x: a channels-last [B, C, H, W] tensor, or a contiguous [..., C] one; fp32, fp16 or bf16.
        bias: [C].
        act: None, "silu" ("swish") or "relu".

    Returns:
        x, updated in place.
    """
    name = "bias_activation"
    if act not in ACT_CODES:
        raise ValueError(f"{name}: activation {act!r} is not one of {', '.join(map(str, ACT_CODES))}")
    check_float(name, "x", x)
    check_float(name, "bias", bias)
    if x.dim() == 4:  # [B, C, H, W]: rows of C channels only in channels-last memory
        if not x.is_contiguous(memory_format=torch.channels_last):
            raise ValueError(f"{name}: a [B, C, H, W] x must be channels-last, got strides {tuple(x.stride())}")
        c = x.shape[1]
    else:
        if not x.is_contiguous():
            raise ValueError(f"{name}: x must be contiguous, got strides {tuple(x.stride())}")
        c = x.shape[-1]
    if bias.shape != (c,):
        raise ValueError(f"{name}: bias {tuple(bias.shape)} does not match {c} channels")
    check_device(name, x, bias)
    rows = x.numel() // c if c else 0
    if rows:
        block_c = min(_BLOCK_C, triton.next_power_of_2(c))
        grid = (triton.cdiv(rows, _BLOCK_R), triton.cdiv(c, block_c))
        _bias_activation_kernel[grid](x, bias, rows, c, ACT=ACT_CODES[act], BLOCK_R=_BLOCK_R, BLOCK_C=block_c,
                                      num_warps=4)
    return x
