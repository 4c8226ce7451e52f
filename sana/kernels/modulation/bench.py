"""Benchmark: modulated LayerNorm kernels vs their fp32 references and diffusers' eager block code.

Run on a CUDA machine from the repository root: `python -m sana.kernels.modulation.bench`
(options: --shapes NAME..., --dtype bf16|fp16|fp32). shift/scale/gate are model-dtype [B, 1, C] chunks,
as in a bf16 diffusers model. GB/s counts x (and y) read once and each output written once. The last table
is SANA-Video's block boundary: x + gate * (y + y2) and the next block's modulated norm, fused ("triton") against
the two kernels one after the other ("two kernels"). The fp8 tables: the norms' fp8 forms (the row quantized for
an fp8 linear as it is written) against the plain kernel followed by the fp8 row quantizer ("norm + quantize").
"""

from __future__ import annotations

import torch

from .._bench import median_ms, parse_args, print_table
from .reference import (
    gated_residual_modulated_norm_diffusers,
    gated_residual_reference,
    gated_residual_modulated_norm_reference,
    modulated_layer_norm_diffusers,
    modulated_layer_norm_reference,
)
from ..fp8.triton import quantize_fp8_rows
from .triton import (
    gated_residual,
    gated_residual_modulated_norm,
    gated_residual_modulated_norm_fp8,
    modulated_layer_norm,
    modulated_layer_norm_fp8,
)

# name: (batch, tokens, channels)
SHAPES = {
    "sana1.6b-1024px": (2, 1024, 2240),
    "sana1.6b-2048px": (2, 4096, 2240),
    "sana1.6b-4096px": (2, 16384, 2240),
    "video-2b-480p-81f": (2, 21 * 30 * 52, 2240),
}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(SHAPES))
    norm_rows, gated_rows, residual_rows, boundary_rows, fp8_rows, fp8_gated_rows = [], [], [], [], [], []
    for name in args.shapes:
        b, n, c = SHAPES[name]
        torch.manual_seed(0)
        x = torch.randn(b, n, c, device="cuda", dtype=args.dtype)
        y = torch.randn_like(x)
        shift, scale, gate = torch.randn(b, 3, c, device="cuda", dtype=args.dtype).chunk(3, dim=1)  # [B, 1, C]
        nbytes = x.numel() * x.element_size()
        norm_rows.append((name, 2 * nbytes, {
            "triton": median_ms(lambda: modulated_layer_norm(x, shift, scale)),
            "reference": median_ms(lambda: modulated_layer_norm_reference(x, shift, scale)),
            "diffusers": median_ms(lambda: modulated_layer_norm_diffusers(x, shift, scale)),
        }))
        gated_rows.append((name, 4 * nbytes, {
            "triton": median_ms(lambda: gated_residual_modulated_norm(x, gate, y, shift, scale)),
            "reference": median_ms(lambda: gated_residual_modulated_norm_reference(x, gate, y, shift, scale)),
            "diffusers": median_ms(lambda: gated_residual_modulated_norm_diffusers(x, gate, y, shift, scale)),
        }))
        residual_rows.append((name, 3 * nbytes, {
            "triton": median_ms(lambda: gated_residual(x, gate, y)),
            "reference": median_ms(lambda: gated_residual_reference(x, gate, y)),
            "diffusers": median_ms(lambda: x + gate * y),
        }))
        fp8_rows.append((name, nbytes + nbytes // x.element_size(), {
            "triton": median_ms(lambda: modulated_layer_norm_fp8(x, shift, scale)),
            "norm + quantize": median_ms(lambda: quantize_fp8_rows(modulated_layer_norm(x, shift, scale))),
        }))
        fp8_gated_rows.append((name, 3 * nbytes + nbytes // x.element_size(), {
            "triton": median_ms(lambda: gated_residual_modulated_norm_fp8(x, gate, y, shift, scale)),
            "norm + quantize": median_ms(
                lambda: quantize_fp8_rows(gated_residual_modulated_norm(x, gate, y, shift, scale)[1])),
        }))
        y2 = torch.randn_like(x)
        boundary_rows.append((name, 5 * nbytes, {
            "triton": median_ms(lambda: gated_residual_modulated_norm(x, gate, y, shift, scale, y2=y2)),
            "two kernels": median_ms(lambda: modulated_layer_norm(gated_residual(x, gate, y, y2), shift, scale)),
        }))
        del x, y, y2
        torch.cuda.empty_cache()
    print_table(f"modulated_layer_norm ({args.dtype})", norm_rows)
    print_table(f"gated_residual_modulated_norm ({args.dtype})", gated_rows)
    print_table(f"gated_residual ({args.dtype})", residual_rows)
    print_table(f"block boundary: gated_residual with y2 + modulated_layer_norm ({args.dtype})", boundary_rows)
    print_table(f"modulated_layer_norm_fp8 ({args.dtype} in, fp8 out)", fp8_rows)
    print_table(f"gated_residual_modulated_norm_fp8 ({args.dtype} in, fp8 out)", fp8_gated_rows)


if __name__ == "__main__":
    main()
