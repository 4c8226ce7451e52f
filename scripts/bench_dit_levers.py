"""The 1.6B image DiT's denoising step with the block levers of 2026-12-06 on and off, in one process on one GPU.

"before": each block makes its own adaLN rows, runs its first modulated norm in a pass of its own and fills an
all-ones gate for the cross-attention's residual-norm (the forward before these levers). "now": the previous block's
last residual add computes this block's first norm and hands it its adaLN rows, and the residual-norm kernel takes no
gate. Both are captured as CUDA graphs with the text's keys and values made once (a step as `sana gen` runs it) and
timed in alternating rounds, so the GPU's drift weighs on both alike.

Run on a CUDA machine from the repository root (diffusers installed: the weights come from its classes):
`python scripts/bench_dit_levers.py [--px 1024 --px 4096] [--rounds 3]`.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager

import torch

from sana import ops
from sana.benchmarks.image import interleaved_ms, random_dit_pair
from sana.graphs import GraphedForward
from sana.models import transformer


@contextmanager
def levers_off():
    """The forward as it was before the levers: no block-boundary fusion, an all-ones gate made for x + y."""
    fused_norm, boundary = ops.gated_residual_modulated_norm, transformer.first_norm_modulation

    def with_ones(x, gate, y, shift, scale, eps=1e-6, y2=None):
        return fused_norm(x, torch.ones_like(shift) if gate is None else gate, y, shift, scale, eps, y2=y2)

    ops.gated_residual_modulated_norm, transformer.first_norm_modulation = with_ones, lambda *args: None
    try:
        yield
    finally:
        ops.gated_residual_modulated_norm, transformer.first_norm_modulation = fused_norm, boundary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--px", type=int, action="append", help="image side (repeat for several; default 1024, 4096)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: this measures a CUDA GPU")
    ref, model = random_dit_pair("sana-1.6b")
    del ref
    torch.cuda.empty_cache()
    print(f"1.6B DiT step, batch 2, bf16, {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(f"{'px':>5} {'before ms':>10} {'now ms':>10} {'before / now':>13} {'max rel. diff':>14}")
    for px in args.px or [1024, 4096]:
        side = px // 32
        x = torch.randn(2, 32, side, side, device="cuda", dtype=torch.bfloat16)
        t = torch.full((2,), 500.0, device="cuda")
        with torch.no_grad():
            context = model.text_context(torch.randn(2, 300, 2304, device="cuda", dtype=torch.bfloat16),
                                         torch.ones(2, 300, device="cuda", dtype=torch.long))
        before, now = GraphedForward(model), GraphedForward(model)
        with torch.no_grad():
            with levers_off():  # captured with the old path; a replay runs no Python, so the patch can go after
                for _ in range(3):
                    old = before(x, context, t).float().clone()
            for _ in range(3):
                new = now(x, context, t).float().clone()
        diff = ((new - old).abs().max() / old.abs().max()).item()
        ms = interleaved_ms({"before": lambda: before(x, context, t), "now": lambda: now(x, context, t)},
                            rounds=args.rounds)
        print(f"{px:>5} {ms['before']:>10.2f} {ms['now']:>10.2f} {ms['before'] / ms['now']:>12.3f}x {diff:>14.2e}")
        before.reset()
        now.reset()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
