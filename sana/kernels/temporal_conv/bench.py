"""Benchmark: the temporal conv as a Triton implicit GEMM vs the channels-last cuDNN conv, SANA-Video shapes.

Run on a CUDA machine from the repository root: `python -m sana.kernels.temporal_conv.bench` (options: --shapes
NAME..., --dtype bf16|fp16|fp32, --sweep to time every candidate launch shape). Both the conv alone and y +
conv(y) (the Mix-FFN's output, the kernel's `add_input` against cuDNN and an add) are timed; TFLOP/s counts the
3 C^2 multiply-adds a token, GB/s the input read once and the output written once.
"""

from __future__ import annotations

import torch

from .._bench import median_ms, run_bench
from .reference import pack_weight, temporal_conv_reference
from .triton import LAUNCH_SHAPES, temporal_conv

# name: (batch, latent frames, tokens a frame, channels); SANA-Video 2B: C 2240, patches (1, 2, 2): 480p is
# 30 x 52 tokens a frame, 720p (704 x 1280) 22 x 40; 81 frames are 21 latent frames.
SHAPES = {
    "video2b-480p-81f": (2, 21, 30 * 52, 2240),
    "video2b-720p-81f": (2, 21, 22 * 40, 2240),
}


def _inputs(name, dtype):
    b, f, s, c = SHAPES[name]
    torch.manual_seed(0)
    y = torch.randn(b, f * s, c, device="cuda", dtype=dtype)
    weight = torch.randn(c, c, 3, 1, device="cuda", dtype=dtype) / (3 * c) ** 0.5
    return y, weight, s, 2 * 3 * b * f * s * c * c, 2 * b * f * s * c * y.element_size()


def _error(out, ref) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def sweep(name, dtype) -> None:
    """Every candidate launch shape at one named shape (the add_input form the model runs), fastest first."""
    y, weight, s, flops, _ = _inputs(name, dtype)
    packed = pack_weight(weight)
    ref = y.float() + temporal_conv_reference(y.float(), weight.float(), s)
    results = []
    for launch in LAUNCH_SHAPES:
        try:
            out = temporal_conv(y, weight, s, add_input=True, packed=packed, launch=launch)
        except Exception as exc:  # noqa: BLE001 - a shape that needs more shared memory than the card has
            print(f"  {launch}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
            continue
        ms = median_ms(lambda: temporal_conv(y, weight, s, add_input=True, packed=packed, launch=launch))
        results.append((ms, launch, _error(out, ref)))
    cudnn = median_ms(lambda: temporal_conv_reference(y, weight, s, add_input=True))
    print(f"temporal_conv sweep, {name} ({dtype}, {torch.cuda.get_device_name()}); cuDNN + add {cudnn:.3f} ms "
          f"({flops / cudnn / 1e9:.0f} TFLOP/s)")
    for ms, launch, err in sorted(results, key=lambda r: r[0]):
        print(f"  {ms:8.3f} ms {flops / ms / 1e9:5.0f} TFLOP/s  {cudnn / ms:5.2f}x cuDNN  err {err:.1e}  {launch}")


def time_shape(name, dtype) -> list[tuple[str, int, dict[str, float]]]:
    y, weight, s, flops, nbytes = _inputs(name, dtype)
    packed = pack_weight(weight)
    ref = temporal_conv_reference(y.float(), weight.float(), s)
    print(f"{name}: relative error {_error(temporal_conv(y, weight, s, packed=packed), ref):.2e} (conv), "
          f"{_error(temporal_conv(y, weight, s, True, packed=packed), y.float() + ref):.2e} (y + conv), "
          f"cuDNN {_error(temporal_conv_reference(y, weight, s), ref):.2e}, against fp32")
    conv = {"triton": median_ms(lambda: temporal_conv(y, weight, s, packed=packed)),
            "cudnn": median_ms(lambda: temporal_conv_reference(y, weight, s))}
    summed = {"triton": median_ms(lambda: temporal_conv(y, weight, s, True, packed=packed)),
              "cudnn": median_ms(lambda: temporal_conv_reference(y, weight, s, True))}
    for label, times in (("conv", conv), ("y + conv", summed)):
        print(f"  {label}: triton {flops / times['triton'] / 1e9:.0f} TFLOP/s, cuDNN "
              f"{flops / times['cudnn'] / 1e9:.0f} TFLOP/s")
    return [(name, nbytes, conv), (name + " +y", nbytes, summed)]


def main() -> None:
    run_bench(__doc__.splitlines()[0], SHAPES, "temporal_conv", time_shape, sweep)


if __name__ == "__main__":
    main()
