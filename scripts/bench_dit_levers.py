"""The 1.6B image DiT's denoising step with the block levers of 2026-12-06 on and off, in one process on one GPU.

"before": each block makes its own adaLN rows, runs its first modulated norm in a pass of its own and fills an
all-ones gate for the cross-attention's residual-norm (the forward before these levers). "now": the previous block's
last residual add computes this block's first norm and hands it its adaLN rows, and the residual-norm kernel takes no
gate. Both are captured as CUDA graphs with the text's keys and values made once (a step as `sana gen` runs it) and
timed in alternating rounds, so the GPU's drift weighs on both alike.

`--lever linear-residual` times the block's output projections with the residual add in the GEMM's epilogue
(`ops.set_linear_residual_kernel`): "off" (cuBLAS's linears), "residual" (the self-attention's output and the
last block's Mix-FFN output) and "all" (also the two whose sum a fused norm reads), on the same weights.

Run on a CUDA machine from the repository root (diffusers installed: the weights come from its classes):
`python scripts/bench_dit_levers.py [--lever boundary|linear-residual] [--px 1024 --px 4096] [--rounds 3]`.
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


@contextmanager
def linear_residual(mode: str):
    before = ops.linear_residual_mode()
    ops.set_linear_residual_kernel(mode)
    try:
        yield
    finally:
        ops.set_linear_residual_kernel(before)


LEVERS = {  # lever: {variant: the context it is captured in}; the first variant is the baseline
    "boundary": {"before": levers_off, "now": contextmanager(lambda: (yield))},
    "linear-residual": {mode: (lambda mode=mode: linear_residual(mode)) for mode in ops.LINEAR_RESIDUAL_MODES},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lever", choices=list(LEVERS), default="boundary")
    parser.add_argument("--px", type=int, action="append", help="image side (repeat for several; default 1024, 4096)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("error: this measures a CUDA GPU")
    ref, model = random_dit_pair("sana-1.6b")
    del ref
    torch.cuda.empty_cache()
    print(f"1.6B DiT step, batch 2, bf16, {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"lever {args.lever}")
    variants = LEVERS[args.lever]
    base = next(iter(variants))
    print(f"{'px':>5}" + "".join(f"{name + ' ms':>14}" for name in variants)
          + "".join(f"{base + ' / ' + name:>18}{'max rel. diff':>14}" for name in list(variants)[1:]))
    for px in args.px or [1024, 4096]:
        side = px // 32
        x = torch.randn(2, 32, side, side, device="cuda", dtype=torch.bfloat16)
        t = torch.full((2,), 500.0, device="cuda")
        with torch.no_grad():
            context = model.text_context(torch.randn(2, 300, 2304, device="cuda", dtype=torch.bfloat16),
                                         torch.ones(2, 300, device="cuda", dtype=torch.long))
        graphs, outputs = {}, {}
        with torch.no_grad():
            for name, variant in variants.items():
                graphs[name] = GraphedForward(model)
                with variant():  # captured in the variant; a replay runs no Python, so the switch can go after
                    for _ in range(3):
                        outputs[name] = graphs[name](x, context, t).float().clone()
        ms = interleaved_ms({name: (lambda g=g: g(x, context, t)) for name, g in graphs.items()}, rounds=args.rounds)
        line = f"{px:>5}" + "".join(f"{ms[name]:>14.2f}" for name in variants)
        for name in list(variants)[1:]:
            diff = ((outputs[name] - outputs[base]).abs().max() / outputs[base].abs().max()).item()
            line += f"{ms[base] / ms[name]:>17.3f}x{diff:>14.2e}"
        print(line)
        for g in graphs.values():
            g.reset()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
