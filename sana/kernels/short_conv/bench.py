"""Benchmark: the symmetric short conv over frames vs its PyTorch reference, SANA-WM shapes.

Run on a CUDA machine from the repository root: `python -m sana.kernels.short_conv.bench` (options: --shapes
NAME..., --dtype bf16|fp16|fp32). The input is the key view of a fused qkv projection, as the model feeds it;
GB/s counts the input read once and the output written once.
"""

from __future__ import annotations

import torch

from .._bench import median_ms, parse_args, print_table
from .reference import short_conv_reference
from .triton import short_conv

# name: (batch, latent frames, tokens a frame, channels, taps); 704 x 1280 is 22 x 40 latent tokens a frame.
SHAPES = {
    "wm-704x1280-161f": (2, 21, 22 * 40, 2240, 4),
    "wm-704x1280-961f": (2, 121, 22 * 40, 2240, 4),
}


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(SHAPES))
    rows = []
    for name in args.shapes:
        b, t, s, c, k = SHAPES[name]
        torch.manual_seed(0)
        x = torch.randn(b, t * s, 3, c, device="cuda", dtype=args.dtype)[:, :, 1]  # the k of a fused qkv
        weight = torch.randn(c, 1, k, device="cuda", dtype=args.dtype) / k
        out, ref = short_conv(x, weight, t), short_conv_reference(x.float(), weight.float(), t)
        err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
        print(f"{name}: relative error {err:.2e} against the fp32 reference")
        times = {"triton": median_ms(lambda: short_conv(x, weight, t)),
                 "reference": median_ms(lambda: short_conv_reference(x, weight, t))}
        rows.append((name, 2 * b * t * s * c * x.element_size(), times))
        del x, out, ref
        torch.cuda.empty_cache()
    print()
    print_table(f"short_conv ({args.dtype})", rows)


if __name__ == "__main__":
    main()
