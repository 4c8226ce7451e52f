"""Benchmark: the fused RMSNorm + affine + residual kernel vs its fp32 reference and diffusers' DC-AE code.

Run on a CUDA machine from the repository root: `python -m sana.kernels.rms_norm.bench`
(options: --shapes NAME..., --dtype bf16|fp16|fp32). GB/s counts x and the residual read once and the output
written once.
"""

from __future__ import annotations

import torch

from .._bench import median_ms, parse_args, print_table
from .reference import rms_norm_affine_diffusers, rms_norm_affine_reference
from .triton import rms_norm_affine

# name: (pixels, channels) of the DC-AE f32c32 decoder's stages at 4096 px
SHAPES = {
    "dcae-4096px-stage0": (4096 * 4096, 128),
    "dcae-4096px-stage1": (2048 * 2048, 256),
    "dcae-4096px-stage2": (1024 * 1024, 512),
    "dcae-4096px-stage4": (256 * 256, 1024),
}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(SHAPES))
    rows = []
    for name in args.shapes:
        n, c = SHAPES[name]
        torch.manual_seed(0)
        x = torch.randn(1, n, c, device="cuda", dtype=args.dtype)
        res = torch.randn_like(x)
        w = torch.randn(c, device="cuda", dtype=args.dtype)
        b = torch.randn(c, device="cuda", dtype=args.dtype)
        nbytes = 3 * x.numel() * x.element_size()
        rows.append((name, nbytes, {
            "triton": median_ms(lambda: rms_norm_affine(x, w, b, residual=res)),
            "reference": median_ms(lambda: rms_norm_affine_reference(x, w, b, residual=res)),
            "diffusers": median_ms(lambda: rms_norm_affine_diffusers(x, w, b, residual=res)),
        }))
        del x, res
        torch.cuda.empty_cache()
    print_table(f"rms_norm_affine ({args.dtype})", rows)


if __name__ == "__main__":
    main()
