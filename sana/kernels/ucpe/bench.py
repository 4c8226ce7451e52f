"""Benchmark: the UCPE camera transform kernel vs its reference (diffusers' arithmetic, in the model dtype).

Run on a CUDA machine from the repository root: `python -m sana.kernels.ucpe.bench` (options: --shapes NAME...,
--dtype bf16|fp16|fp32, --sweep to time every candidate launch shape). GB/s counts x read once and the output written once.
"""

from __future__ import annotations

import itertools

import torch

from .._bench import median_ms, parse_args, print_table
from .reference import ucpe_reference
from .triton import Config, ucpe

# name: (batch, latent frames, tokens a frame, heads, head dim): SANA-WM 2.6B at 704 x 1280, 161 and 961 frames.
SHAPES = {
    "wm-704x1280-161f": (2, 21, 880, 20, 112),
    "wm-704x1280-961f": (2, 121, 880, 20, 112),
}
MODES = {"encode q/v": dict(downscale=True), "encode k": dict(downscale=True, inflation=True),
         "decode": dict(inverse_rope=True)}


def _inputs(name: str, dtype: torch.dtype):
    """Random head vectors, matrices and rotary tables at one named shape."""
    b, t, s, h, d = SHAPES[name]
    torch.manual_seed(0)
    x = torch.randn(b, t * s, h, d, device="cuda", dtype=dtype)
    mats = (torch.randn(b, t * s, 4, 4, device="cuda") / 2).to(dtype)
    angles = torch.randn(t * s, d // 4, device="cuda")
    cos, sin = angles.cos(), angles.sin()
    return x, mats, cos, sin


def time_mode(name: str, mode: str, dtype: torch.dtype) -> tuple[str, int, dict[str, float]]:
    x, mats, cos, sin = _inputs(name, dtype)
    flags = MODES[mode]
    out = ucpe(x, mats, cos, sin, **flags)
    ref = ucpe_reference(x.float(), mats.float(), cos, sin, **flags)
    out, ref = (out[0], ref[0]) if flags.get("inflation") else (out, ref)
    print(f"{name} {mode}: relative error {((out.float() - ref).norm() / ref.norm()).item():.2e} against fp32")
    times = {"triton": median_ms(lambda: ucpe(x, mats, cos, sin, **flags)),
             "reference": median_ms(lambda: ucpe_reference(x, mats, cos, sin, **flags))}
    return f"{name} {mode}", 2 * x.numel() * x.element_size(), times


def sweep(name: str, dtype: torch.dtype) -> None:
    """Every candidate launch shape for the keys' encode (the heaviest mode) at one named shape."""
    x, mats, cos, sin = _inputs(name, dtype)
    flags = MODES["encode k"]
    ref = ucpe_reference(x.float(), mats.float(), cos, sin, **flags)[0]
    results = []
    for rows, heads, warps in itertools.product((16, 32, 64), (1, 4, x.shape[2]), (4, 8)):
        config = Config(rows, heads, warps)
        out = ucpe(x, mats, cos, sin, config=config, **flags)[0]
        err = ((out.float() - ref).norm() / ref.norm()).item()
        ms = median_ms(lambda: ucpe(x, mats, cos, sin, config=config, **flags))
        results.append((ms, config, err))
    print(f"ucpe sweep (encode k), {name} ({dtype}, {torch.cuda.get_device_name()})")
    for ms, config, err in sorted(results, key=lambda r: r[0])[:12]:
        print(f"  {config}: {ms:.3f} ms, {2 * x.numel() * x.element_size() / ms / 1e6:.0f} GB/s, rel. err {err:.2e}")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(SHAPES), sweep=True)
    if args.sweep:
        sweep(args.shapes[0], args.dtype)
        return
    rows = [time_mode(name, mode, args.dtype) for name in args.shapes for mode in MODES]
    print_table(f"ucpe ({args.dtype})", rows)


if __name__ == "__main__":
    main()
