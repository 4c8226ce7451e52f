"""Benchmark: the output-gate kernel vs diffusers' four-pass form.

Run on a CUDA machine from the repository root: `python -m sana.kernels.silu_gate.bench` (options: --shapes
NAME..., --dtype bf16|fp16|fp32). GB/s counts x and the gate read once and the output written once.
"""

from __future__ import annotations

import torch

from .._bench import median_ms, parse_args, print_table
from .reference import silu_gate_reference
from .triton import silu_gate

# name: (batch, tokens, channels): SANA-WM 2.6B at 704 x 1280, 161 frames (21 x 880 tokens), C 2240.
SHAPES = {"wm-704x1280-161f": (2, 21 * 880, 2240)}


def time_shape(name: str, dtype: torch.dtype) -> tuple[str, int, dict[str, float]]:
    torch.manual_seed(0)
    x = torch.randn(*SHAPES[name], device="cuda", dtype=dtype)
    gate = torch.randn(*SHAPES[name], device="cuda", dtype=dtype)
    times = {"triton": median_ms(lambda: silu_gate(x, gate)),
             "diffusers": median_ms(lambda: silu_gate_reference(x, gate))}
    return name, 3 * x.numel() * x.element_size(), times


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(SHAPES))
    print_table(f"silu_gate ({args.dtype})", [time_shape(name, args.dtype) for name in args.shapes])


if __name__ == "__main__":
    main()
