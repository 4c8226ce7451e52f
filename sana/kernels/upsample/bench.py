"""Benchmark: the up block's phase assembly kernel vs its PyTorch reference, at the DC-AE f32c32 decoder's up
blocks for a 4096 px image.

Run on a CUDA machine from the repository root: `python -m sana.kernels.upsample.bench`
(options: --shapes NAME..., --dtype bf16|fp16|fp32). GB/s counts the conv output and shortcut read once and the
output written once.
"""

from __future__ import annotations

import torch

from .._bench import median_ms, parse_args, print_table
from .reference import assemble_phases_reference
from .triton import assemble_phases

# name: (low-resolution side, Cin, Cout)
SHAPES = {
    "dcae-4096px-up0": (2048, 256, 128),
    "dcae-4096px-up1": (1024, 512, 256),
    "dcae-4096px-up2": (512, 512, 512),
}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(SHAPES))
    rows = []
    for name in args.shapes:
        side, cin, cout = SHAPES[name]
        torch.manual_seed(0)
        cl = torch.channels_last
        y = torch.randn(1, 4 * cout, side + 1, side + 1, device="cuda", dtype=args.dtype).contiguous(memory_format=cl)
        skip = torch.randn(1, cin, side, side, device="cuda", dtype=args.dtype).contiguous(memory_format=cl)
        nbytes = (y.numel() + skip.numel() + 4 * cout * side * side) * y.element_size()
        rows.append((name, nbytes, {
            "triton": median_ms(lambda: assemble_phases(y, skip)),
            "reference": median_ms(lambda: assemble_phases_reference(y, skip)),
        }))
        del y, skip
        torch.cuda.empty_cache()
    print_table(f"assemble_phases ({args.dtype})", rows)


if __name__ == "__main__":
    main()
