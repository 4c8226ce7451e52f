"""Benchmark: fused Mix-FFN middle vs its fp32 reference and diffusers' eager NCHW GLUMBConv steps.

Run on a CUDA machine from the repository root: `python -m sana.kernels.mixffn.bench`
(options: --shapes NAME..., --dtype bf16|fp16|fp32, --sweep to time every candidate launch shape). GB/s counts
h [B, N, 2*Hd] read once and the output [B, N, Hd] written once.
"""

from __future__ import annotations

import itertools

import torch

from .._bench import median_ms, run_bench
from .reference import mixffn_middle_diffusers, mixffn_middle_reference
from .triton import Config, mixffn_middle

# name: (images, latent height, latent width, Hd); SANA 1.6B: C 2240, Hd = int(2.5 * 2240) = 5600. SANA-Video 2B
# has the same Hd and runs the middle per frame: batch 2 x 21 latent frames at 480p (30 x 52), 2 x 11 at 720p.
SHAPES = {
    "sana1.6b-1024px": (2, 32, 32, 5600),
    "sana1.6b-2048px": (2, 64, 64, 5600),
    "sana1.6b-4096px": (2, 128, 128, 5600),
    "video2b-480p-81f": (42, 30, 52, 5600),
    "video2b-720p-81f": (22, 22, 40, 5600),
}


def sweep_configs() -> list[Config]:
    return [Config(rows, block_j, block_c, warps) for rows, (block_j, block_c, warps) in itertools.product(
        (16, 32), ((1, 64, 2), (1, 128, 2), (1, 128, 4), (1, 256, 4), (1, 256, 8), (2, 64, 4), (2, 128, 4),
                   (2, 128, 8), (2, 256, 8), (4, 32, 4), (4, 64, 4), (4, 128, 8)))]


def _inputs(name, dtype):
    b, height, width, hd = SHAPES[name]
    torch.manual_seed(0)
    h = torch.randn(b, height * width, 2 * hd, device="cuda", dtype=dtype)
    weight = torch.randn(2 * hd, 1, 3, 3, device="cuda", dtype=dtype) / 3
    bias = torch.randn(2 * hd, device="cuda", dtype=dtype)
    return h, height, width, weight, bias, 3 * b * height * width * hd * h.element_size()


def sweep(name, dtype) -> None:
    """Every candidate launch shape at one named shape, with its error against the fp32 reference."""
    h, height, width, weight, bias, nbytes = _inputs(name, dtype)
    ref = mixffn_middle_reference(h.float(), height, width, weight.float(), bias.float())
    results = []
    for config in sweep_configs():
        out = mixffn_middle(h, height, width, weight, bias, config=config)
        err = ((out.float() - ref).norm() / ref.norm()).item()
        ms = median_ms(lambda: mixffn_middle(h, height, width, weight, bias, config=config))
        results.append((ms, config, err))
    print(f"mixffn_middle sweep, {name} ({dtype}, {torch.cuda.get_device_name()})")
    for ms, config, err in sorted(results, key=lambda r: r[0]):
        print(f"  {ms:8.3f} ms {nbytes / ms / 1e6:6.0f} GB/s  err {err:.1e}  {tuple(config)}")


def time_shape(name, dtype) -> tuple[str, int, dict[str, float]]:
    h, height, width, weight, bias, nbytes = _inputs(name, dtype)
    times = {
        "triton": median_ms(lambda: mixffn_middle(h, height, width, weight, bias)),
        "reference": median_ms(lambda: mixffn_middle_reference(h, height, width, weight, bias)),
        "diffusers": median_ms(lambda: mixffn_middle_diffusers(h, height, width, weight, bias)),
    }
    return name, nbytes, times


def main() -> None:
    run_bench(__doc__.splitlines()[0], SHAPES, "mixffn_middle", time_shape, sweep)


if __name__ == "__main__":
    main()
