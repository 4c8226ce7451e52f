"""Benchmark: fused Mix-FFN middle vs its fp32 reference and diffusers' eager NCHW GLUMBConv steps.

Run on a CUDA machine from the repository root: `python -m sana.kernels.mixffn.bench`
(options: --shapes NAME..., --dtype bf16|fp16|fp32). GB/s counts h [B, N, 2*Hd] read once and the output
[B, N, Hd] written once.
"""

from __future__ import annotations

import torch

from .._bench import median_ms, parse_args, print_table
from .reference import mixffn_middle_diffusers, mixffn_middle_reference
from .triton import mixffn_middle

# name: (batch, latent height, latent width, Hd); SANA 1.6B: C 2240, Hd = int(2.5 * 2240) = 5600.
SHAPES = {
    "sana1.6b-1024px": (2, 32, 32, 5600),
    "sana1.6b-2048px": (2, 64, 64, 5600),
    "sana1.6b-4096px": (2, 128, 128, 5600),
}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(SHAPES))
    rows = []
    for name in args.shapes:
        b, height, width, hd = SHAPES[name]
        torch.manual_seed(0)
        h = torch.randn(b, height * width, 2 * hd, device="cuda", dtype=args.dtype)
        weight = torch.randn(2 * hd, 1, 3, 3, device="cuda", dtype=args.dtype) / 3
        bias = torch.randn(2 * hd, device="cuda", dtype=args.dtype)
        times = {
            "triton": median_ms(lambda: mixffn_middle(h, height, width, weight, bias)),
            "reference": median_ms(lambda: mixffn_middle_reference(h, height, width, weight, bias)),
            "diffusers": median_ms(lambda: mixffn_middle_diffusers(h, height, width, weight, bias)),
        }
        rows.append((name, 3 * b * height * width * hd * h.element_size(), times))
        del h
        torch.cuda.empty_cache()
    print_table(f"mixffn_middle ({args.dtype})", rows)


if __name__ == "__main__":
    main()
