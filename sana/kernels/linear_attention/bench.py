"""Benchmark: fused linear attention vs its fp32 reference and diffusers' eager math, real SANA shapes.

Run on a CUDA machine from the repository root: `python -m sana.kernels.linear_attention.bench`
(options: --shapes NAME..., --dtype bf16|fp16|fp32). GB/s counts the bytes the op must move: q, k, v read
once and the output written once.
"""

from __future__ import annotations

import torch

from .._bench import median_ms, parse_args, print_table
from .reference import linear_attention_diffusers, linear_attention_reference
from .triton import linear_attention

# name: (batch, tokens, heads, head dim)
SHAPES = {
    "sana1.6b-1024px": (2, 1024, 70, 32),
    "sana1.6b-2048px": (2, 4096, 70, 32),
    "sana1.6b-4096px": (2, 16384, 70, 32),
    "video-2b-480p-81f": (2, 21 * 60 * 104, 20, 112),
}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(SHAPES))
    rows = []
    for name in args.shapes:
        b, n, h, d = SHAPES[name]
        torch.manual_seed(0)
        qkv = torch.randn(b, n, 3 * h * d, device="cuda", dtype=args.dtype)  # one fused projection output
        q, k, v = qkv.chunk(3, dim=-1)
        times = {
            "triton": median_ms(lambda: linear_attention(q, k, v, h)),
            "reference": median_ms(lambda: linear_attention_reference(q, k, v, h)),
            "diffusers": median_ms(lambda: linear_attention_diffusers(q, k, v, h)),
        }
        rows.append((name, 4 * b * n * h * d * qkv.element_size(), times))
        del qkv, q, k, v
        torch.cuda.empty_cache()
    print_table(f"linear_attention ({args.dtype})", rows)


if __name__ == "__main__":
    main()
