"""Benchmark: cross-attention to the text, the Triton kernel vs SDPA as the models call it, SANA shapes.

Run on a CUDA machine from the repository root: `python -m sana.kernels.text_attention.bench` (options: --shapes
NAME..., --dtype bf16|fp16|fp32, --sweep to time every candidate launch shape). "sdpa" is the models' path before
the kernel: heads split off the token-major queries, `F.scaled_dot_product_attention` with the padding bias, heads
joined back. GB/s counts the queries read and the output written once (the keys and values are small).
"""

from __future__ import annotations

import torch

from .._bench import median_ms, run_bench
from .reference import text_attention_reference
from .triton import LAUNCH_SHAPES, text_attention

# name: (batch, tokens, heads, head dim, text tokens); batch 2 is a CFG step, Sprint runs batch 1
SHAPES = {
    "1600m-1024px": (2, 32 * 32, 20, 112, 300),
    "1600m-2048px": (2, 64 * 64, 20, 112, 300),
    "1600m-4096px": (2, 128 * 128, 20, 112, 300),
    "sprint1600m-1024px": (1, 32 * 32, 20, 112, 300),
    "600m-1024px": (2, 32 * 32, 16, 72, 300),
    "video2b-480p-81f": (2, 21 * 30 * 52, 20, 112, 300),
}


def _inputs(name, dtype):
    b, n, heads, d, length = SHAPES[name]
    torch.manual_seed(0)
    q = torch.randn(b, n, heads * d, device="cuda", dtype=dtype)
    k, v = (torch.randn(b, length, heads * d, device="cuda", dtype=dtype).unflatten(-1, (heads, d)).transpose(1, 2)
            for _ in range(2))
    keep = torch.ones(b, length, device="cuda", dtype=dtype)
    keep[0, 40:] = 0  # one prompt of 40 tokens, one of 300
    bias = ((1 - keep) * -10000.0)[:, None, None, :]
    return q, k, v, heads, bias, 2 * q.numel() * q.element_size()


def _error(out, ref) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def sweep(name, dtype) -> None:
    """Every candidate launch shape at one named shape, fastest first, beside SDPA."""
    q, k, v, heads, bias, nbytes = _inputs(name, dtype)
    ref = text_attention_reference(q.float(), k.float(), v.float(), heads, bias.float())
    results = []
    for launch in LAUNCH_SHAPES:
        try:
            out = text_attention(q, k, v, heads, bias, launch=launch)
        except Exception as exc:  # noqa: BLE001 - a shape that needs more shared memory than the card has
            print(f"  {launch}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
            continue
        ms = median_ms(lambda: text_attention(q, k, v, heads, bias, launch=launch))
        results.append((ms, launch, _error(out, ref)))
    sdpa = median_ms(lambda: text_attention_reference(q, k, v, heads, bias))
    print(f"text_attention sweep, {name} ({dtype}, {torch.cuda.get_device_name()}); SDPA {sdpa:.3f} ms "
          f"({nbytes / sdpa / 1e6:.0f} GB/s)")
    for ms, launch, err in sorted(results, key=lambda r: r[0]):
        print(f"  {ms:8.3f} ms {nbytes / ms / 1e6:6.0f} GB/s  {sdpa / ms:5.2f}x SDPA  err {err:.1e}  {launch}")


def time_shape(name, dtype) -> tuple[str, int, dict[str, float]]:
    q, k, v, heads, bias, nbytes = _inputs(name, dtype)
    ref = text_attention_reference(q.float(), k.float(), v.float(), heads, bias.float())
    print(f"{name}: relative error {_error(text_attention(q, k, v, heads, bias), ref):.2e} (triton), "
          f"{_error(text_attention_reference(q, k, v, heads, bias), ref):.2e} (SDPA), against fp32")
    return name, nbytes, {"triton": median_ms(lambda: text_attention(q, k, v, heads, bias)),
                          "sdpa": median_ms(lambda: text_attention_reference(q, k, v, heads, bias))}


def main() -> None:
    run_bench(__doc__.splitlines()[0], SHAPES, "text_attention", time_shape, sweep)


if __name__ == "__main__":
    main()
