"""LayerNorm (no affine) + adaLN modulation in plain PyTorch: the spec the Triton kernels are tested against.

Precision: statistics and modulation in fp32, one rounding to x's dtype at the end. diffusers rounds
`norm(x)` to the model dtype first and then modulates in the promoted dtype of (x, shift, scale): with a
bf16 model that is bf16 arithmetic, so the two differ by bf16 rounding. With an fp32 `scale_shift_table`
and a half x, diffusers' modulated output is fp32; here it is x's dtype (the next op consumes x's dtype).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def _per_batch(t: torch.Tensor) -> torch.Tensor:
    """[B, C] or [B, 1, C] (a chunk of diffusers' [B, 6, C] table sum) -> [B, 1, C] in fp32."""
    return t.reshape(t.shape[0], 1, t.shape[-1]).float()


def modulated_layer_norm_reference(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                                   eps: float = EPS) -> torch.Tensor:
    """x [B, N, C]; shift, scale [B, C] or [B, 1, C] -> LN(x) * (1 + scale) + shift, [B, N, C] in x's dtype (fp32 math)."""
    c = x.shape[-1]
    xf = F.layer_norm(x.float(), (c,), eps=eps)  # [B, N, C]
    out = xf * (1 + _per_batch(scale)) + _per_batch(shift)
    return out.to(x.dtype)


def gated_residual_modulated_norm_reference(x: torch.Tensor, gate: torch.Tensor | None, y: torch.Tensor,
                                            shift: torch.Tensor, scale: torch.Tensor, eps: float = EPS,
                                            y2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x, y (, y2) [B, N, C]; gate (None: 1), shift, scale [B, C] or [B, 1, C] -> (r, LN(r) * (1 + scale) +
    shift), both [B, N, C] in x's dtype.

    r = x + gate * y (or x + gate * (y + y2)) is computed in fp32 and rounded to x's dtype once; the norm reads
    the rounded r, so the second output equals `modulated_layer_norm_reference(r, shift, scale)` exactly as an
    unfused pair would.
    """
    branch = y.float() if y2 is None else y.float() + y2.float()
    r = (x.float() + (branch if gate is None else _per_batch(gate) * branch)).to(x.dtype)
    return r, modulated_layer_norm_reference(r, shift, scale, eps)


def gated_residual_reference(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor,
                             y2: torch.Tensor | None = None) -> torch.Tensor:
    """x, y (, y2) [B, N, C]; gate [B, C] or [B, 1, C] -> x + gate * y (or x + gate * (y + y2)), [B, N, C] in x's
    dtype (fp32 math, one rounding)."""
    branch = y.float() if y2 is None else y.float() + y2.float()
    return (x.float() + _per_batch(gate) * branch).to(x.dtype)


def modulated_layer_norm_diffusers(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor,
                                   eps: float = EPS) -> torch.Tensor:
    """diffusers' block code (`norm1(x) * (1 + scale_msa) + shift_msa`), for benchmarks; shift/scale [B, C]."""
    norm = F.layer_norm(x, (x.shape[-1],), eps=eps)
    b, c = x.shape[0], x.shape[-1]
    return (norm * (1 + scale.reshape(b, 1, c)) + shift.reshape(b, 1, c)).to(x.dtype)


def gated_residual_modulated_norm_diffusers(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor,
                                            shift: torch.Tensor, scale: torch.Tensor,
                                            eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' `x + gate_mlp * ff_output` followed by the next block's modulated norm1, for benchmarks."""
    r = x + gate.reshape(x.shape[0], 1, x.shape[-1]) * y
    return r, modulated_layer_norm_diffusers(r, shift, scale, eps)
