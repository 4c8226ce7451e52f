"""fp8 weights for the DiT's block linears: `Fp8Linear` and `quantize_blocks_fp8` (the image and video DiTs,
whose blocks name their linears alike, and the world DiT, whose blocks list theirs).

The six linears of every block (self-attention qkv and out, cross-attention q and out, the Mix-FFN's two 1x1
convs) hold ~98% of a SANA DiT's multiply-adds. Their weights become float8_e4m3fn with one fp32 scale per
output channel; activations are quantized per token as they arrive (`ops.fp8_linear`), or already quantized by
the modulated norm before them (`QuantizedRows`: the self-attention's qkv and the Mix-FFN's first conv read
their norm's fp8 form, so the row is never written in bf16). Everything else (norms, attention, the depthwise
conv, embeddings, the text's key/value projection) stays in the compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import ops
from ..kernels.fp8.reference import FP8_DTYPE, quantize_fp8_rows_reference

# (submodule, linear) pairs of a SanaBlock / SanaVideoBlock that carry the image or clip tokens (the video block's
# temporal conv stays in the compute dtype). A block class may name its own as `FP8_LINEARS` ("" for the block).
BLOCK_LINEARS = (("attn", "qkv"), ("attn", "out"), ("cross_attn", "q"), ("cross_attn", "out"),
                 ("ff", "inverted"), ("ff", "point"))


@dataclass(frozen=True)
class QuantizedRows:
    """Activations [B, N, K] already quantized per row for an `Fp8Linear` (q float8_e4m3fn, scale [B, N] fp32),
    as the norm kernels' fp8 forms write them; `dtype` is the activations' own (the linear's output dtype)."""

    q: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def __getitem__(self, rows: slice) -> "QuantizedRows":
        """Batch rows (PAG keeps some rows apart)."""
        return QuantizedRows(self.q[rows], self.scale[rows], self.dtype)


class Fp8Linear(nn.Module):
    """A frozen linear with a float8_e4m3fn weight [N, K] and per-output-channel fp32 scales [N]."""

    def __init__(self, weight_fp8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight_fp8.shape
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, device: torch.device | str | None = None) -> "Fp8Linear":
        """Quantize `linear`'s weight per output row (amax -> 448); the bias keeps its dtype. With `device`, the
        weight is copied there first and quantized there: the same rows give the same bits wherever they are."""
        weight = linear.weight.detach()
        weight_fp8, weight_scale = quantize_fp8_rows_reference(weight if device is None else weight.to(device))
        bias = None if linear.bias is None else linear.bias.detach().to(device=device, copy=True)
        return cls(weight_fp8, weight_scale, bias)

    def forward(self, x: torch.Tensor | QuantizedRows) -> torch.Tensor:
        return self.output_rows(x, 0, self.out_features)

    def output_rows(self, x: torch.Tensor | QuantizedRows, start: int, end: int) -> torch.Tensor:
        """Outputs start:end only (rows of the weight), e.g. the value part of a fused qkv."""
        bias = None if self.bias is None else self.bias[start:end]
        weight, scale = self.weight_fp8[start:end], self.weight_scale[start:end]
        if isinstance(x, QuantizedRows):
            return ops.fp8_linear_quantized(x.q, x.scale, weight, scale, bias, x.dtype)
        return ops.fp8_linear(x, weight, scale, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 rowwise"


def quantize_blocks_fp8(transformer: nn.Module, device: torch.device | str | None = None) -> int:
    """Replace every block's image-token linears with `Fp8Linear`s in place; returns how many were replaced.

    A linear whose sides are not multiples of 16 (tiny test configs) stays as it is: cuBLAS's fp8 GEMM needs
    them. Each bf16 weight is freed as soon as its fp8 copy exists, so the peak is one linear above the model.
    With `device` (the model in host memory), each linear is copied there and quantized there, and only its fp8
    form stays: the device holds the fp8 linears and one bf16 weight at a time, never the bf16 model; the rest
    of the model stays where it is (`sana.loading.fp8` moves it after). None quantizes each linear where it is.
    """
    replaced = 0
    for block in transformer.blocks:
        for parent_name, name in getattr(block, "FP8_LINEARS", BLOCK_LINEARS):
            parent = getattr(block, parent_name) if parent_name else block
            linear = getattr(parent, name, None)  # None: this block has no such linear (e.g. no camera branch)
            if not isinstance(linear, nn.Linear) or linear.in_features % 16 or linear.out_features % 16:
                continue
            setattr(parent, name, Fp8Linear.from_linear(linear, device))
            replaced += 1
    transformer.fp8 = replaced > 0
    return replaced


def is_fp8(module: nn.Module) -> bool:
    return any(isinstance(m, Fp8Linear) for m in module.modules())


def linear_output_rows(linear: nn.Module, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Outputs start:end of a linear or an `Fp8Linear`, without computing the others."""
    if isinstance(linear, Fp8Linear):
        return linear.output_rows(x, start, end)
    bias = None if linear.bias is None else linear.bias[start:end]
    return torch.nn.functional.linear(x, linear.weight[start:end], bias)


__all__ = ["Fp8Linear", "QuantizedRows", "quantize_blocks_fp8", "is_fp8", "linear_output_rows", "FP8_DTYPE"]
