"""Benchmark: the query / key preparation kernel vs its reference (diffusers' separate norm, ReLU, scale, RoPE).

Run on a CUDA machine from the repository root: `python -m sana.kernels.qk_prep.bench` (options: --shapes NAME...,
--dtype bf16|fp16|fp32, --sweep to time every candidate launch shape). GB/s counts x read once and the plain and
rotated heads written once.
"""

from __future__ import annotations

import itertools

import torch

from .._bench import median_ms, run_bench
from .reference import qk_prep_reference
from .triton import Config, qk_prep

# name: (batch, tokens, heads, head dim): SANA-WM 2.6B at 704 x 1280, 161 frames (21 x 880 tokens).
SHAPES = {"wm-704x1280-161f": (2, 21 * 880, 20, 112)}


def _inputs(name: str, dtype: torch.dtype):
    b, n, h, d = SHAPES[name]
    torch.manual_seed(0)
    x = torch.randn(b, n, 3 * h * d, device="cuda", dtype=dtype)[..., h * d:2 * h * d]  # the k of a fused qkv
    weight = torch.randn(h * d, device="cuda", dtype=dtype)
    angles = torch.view_as_real(torch.polar(torch.ones(n, d // 2, device="cuda"), torch.randn(n, d // 2, device="cuda")))
    return x, weight, h, angles[..., 0], angles[..., 1], 3 * b * n * h * d * x.element_size()


def time_shape(name: str, dtype: torch.dtype) -> tuple[str, int, dict[str, float]]:
    x, weight, h, cos, sin, nbytes = _inputs(name, dtype)
    times = {"triton": median_ms(lambda: qk_prep(x, weight, 1e-6, h, scale=0.05, cos=cos, sin=sin)),
             "reference": median_ms(lambda: qk_prep_reference(x, weight, 1e-6, h, scale=0.05, cos=cos, sin=sin))}
    return name, nbytes, times


def sweep(name: str, dtype: torch.dtype) -> None:
    """Every candidate launch shape at one named shape, with its error against the fp32 reference."""
    x, weight, h, cos, sin, nbytes = _inputs(name, dtype)
    _, ref = qk_prep_reference(x.float(), weight.float(), 1e-6, h, scale=0.05, cos=cos, sin=sin)
    results = []
    for rows, warps in itertools.product((1, 2, 4), (4, 8, 16)):
        config = Config(rows, warps)
        _, out = qk_prep(x, weight, 1e-6, h, scale=0.05, cos=cos, sin=sin, config=config)
        err = ((out.float() - ref).norm() / ref.norm()).item()
        ms = median_ms(lambda: qk_prep(x, weight, 1e-6, h, scale=0.05, cos=cos, sin=sin, config=config))
        results.append((ms, config, err))
    print(f"qk_prep sweep, {name} ({dtype}, {torch.cuda.get_device_name()})")
    for ms, config, err in sorted(results, key=lambda r: r[0]):
        print(f"  {config}: {ms:.3f} ms, {nbytes / ms / 1e6:.0f} GB/s, rel. err {err:.2e}")


def main() -> None:
    run_bench(__doc__.splitlines()[0], SHAPES, "qk_prep", time_shape, sweep)


if __name__ == "__main__":
    main()
