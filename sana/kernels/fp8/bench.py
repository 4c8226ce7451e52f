"""Benchmark: the fp8 row quantizer vs its reference, and the fp8 linear (quantize + `torch._scaled_mm`) vs the
bf16 `F.linear` it replaces, at the SANA 1.6B block linears' shapes.

Run on a CUDA machine with compute capability 8.9+ from the repository root: `python -m sana.kernels.fp8.bench`
(options: --shapes NAME...). The quantizer's GB/s counts x read once and q written once; in the linears' table the
"GB/s" column reads TFLOP/s (its bytes field carries FLOPs / 1000).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._bench import median_ms, parse_args, print_table
from .reference import quantize_fp8_rows_reference
from .triton import fp8_linear, quantize_fp8_rows

D, HIDDEN = 2240, 5600
# name: tokens (batch 2 at 1024 / 2048 / 4096 px)
SHAPES = {"sana1.6b-1024px": 2 * 1024, "sana1.6b-2048px": 2 * 4096, "sana1.6b-4096px": 2 * 16384}
# block linear: (K, N)
LINEARS = {"qkv": (D, 3 * D), "out": (D, D), "ffn-inverted": (D, 2 * HIDDEN), "ffn-point": (HIDDEN, D)}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(SHAPES))
    quant_rows, linear_rows = [], []
    for name in args.shapes:
        m = SHAPES[name]
        torch.manual_seed(0)
        for label, (k, n) in LINEARS.items():
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
            b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
            w8, ws = quantize_fp8_rows_reference(w)
            if label in ("qkv", "ffn-point"):  # the two input widths
                quant_rows.append((f"{name} K={k}", 3 * x.numel(), {
                    "triton": median_ms(lambda: quantize_fp8_rows(x)),
                    "reference": median_ms(lambda: quantize_fp8_rows_reference(x)),
                }))
            flops = 2 * m * k * n
            linear_rows.append((f"{name} {label}", flops // 1000, {
                "fp8": median_ms(lambda: fp8_linear(x, w8, ws, b)),
                "bf16": median_ms(lambda: F.linear(x, w, b)),
            }))
            del x, w
        torch.cuda.empty_cache()
    print_table("quantize_fp8_rows (bf16 in)", quant_rows)
    print_table("fp8_linear (quantize + _scaled_mm) vs bf16 F.linear; 'GB/s' reads TFLOP/s", linear_rows)


if __name__ == "__main__":
    main()
