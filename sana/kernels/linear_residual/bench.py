"""Benchmark: the linear with the gated residual in its epilogue vs cuBLAS's linear and the residual pass after it.

Run on a CUDA machine from the repository root: `python -m sana.kernels.linear_residual.bench` (options: --shapes
NAME..., --dtype bf16|fp16|fp32, --sweep to time every candidate launch shape). The 1.6B DiT's three sites a block:
the self-attention's output projection (its gated residual a pass of its own), the cross-attention's output and the
Mix-FFN's last 1x1 conv (their residual fused with the next modulated norm: there the fused GEMM is followed by the
norm alone). "cuBLAS GEMM" is the linear alone, the floor the fused kernel must reach to pay; TFLOP/s counts the
GEMM's multiply-adds, GB/s the bytes of the unfused form's passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import gated_residual, gated_residual_modulated_norm, modulated_layer_norm
from .._bench import median_ms, run_bench
from .reference import linear_gated_residual_reference
from .triton import LAUNCH_SHAPES, linear_gated_residual

# name: (batch, tokens, K, D, bias, gate, norm after); 1.6B: D 2240, the Mix-FFN's hidden 5600, cross-attention
# 20 heads of 112. Tokens: 1024 at 1024 px, 4096 at 2048 px, 16384 at 4096 px; batch 2 (CFG), Sprint batch 1.
SITES = {"attn-out": (2240, True, True, False), "cross-out": (2240, True, False, True),
         "ffn-point": (5600, False, True, True)}
SHAPES = {f"{site}-{px}": (batch, (px // 32) ** 2, k, 2240, bias, gate, norm)
          for px, batch in ((1024, 2), (2048, 2), (4096, 2)) for site, (k, bias, gate, norm) in SITES.items()}
SHAPES.update({f"{site}-sprint": (1, 1024, k, 2240, bias, gate, norm)
               for site, (k, bias, gate, norm) in SITES.items()})


def _inputs(name, dtype):
    b, n, k, d, has_bias, has_gate, norm = SHAPES[name]
    torch.manual_seed(0)
    h = torch.randn(b, n, k, device="cuda", dtype=dtype)
    weight = torch.randn(d, k, device="cuda", dtype=dtype) / k**0.5
    bias = torch.randn(d, device="cuda", dtype=dtype) if has_bias else None
    x = torch.randn(b, n, d, device="cuda", dtype=dtype)
    table = torch.randn(b, 6, d, device="cuda", dtype=dtype)
    gate = table[:, 2:3] if has_gate else None
    shift, scale = table[:, 3:4], table[:, 4:5]
    return h, weight, bias, x, gate, shift, scale, norm


def _forms(name, dtype, launch=None):
    """{form: callable}: the fused kernel, the unfused block code and cuBLAS's GEMM alone (each followed by the norm
    where the site feeds one)."""
    h, weight, bias, x, gate, shift, scale, norm = _inputs(name, dtype)

    def fused():
        out = linear_gated_residual(h, weight, bias, x, gate, launch=launch)
        return modulated_layer_norm(out, shift, scale) if norm else out

    def unfused():
        y = F.linear(h, weight, bias)
        if norm:
            return gated_residual_modulated_norm(x, gate, y, shift, scale)
        return gated_residual(x, gate, y)

    return {"fused": fused, "cuBLAS + residual": unfused, "cuBLAS GEMM": lambda: F.linear(h, weight, bias)}


def _flops_bytes(name, dtype):
    b, n, k, d, _, _, norm = SHAPES[name]
    size = torch.tensor([], dtype=dtype).element_size()
    passes = 4 if not norm else 5  # h in, y out; x, y in, out (+ the normed rows) out
    return 2 * b * n * k * d, size * b * n * (k + d * (passes - 1))


def _error(name, dtype, launch=None) -> float:
    h, weight, bias, x, gate, *_ = _inputs(name, dtype)
    out = linear_gated_residual(h, weight, bias, x, gate, launch=launch)
    exact = linear_gated_residual_reference(h.float(), weight.float(), None if bias is None else bias.float(),
                                            x.float(), None if gate is None else gate.float())
    return ((out.float() - exact).norm() / exact.norm()).item()


def sweep(name, dtype) -> None:
    """Every candidate launch shape at one named shape, fastest first, against the unfused form and the GEMM."""
    flops, _ = _flops_bytes(name, dtype)
    base = _forms(name, dtype)
    unfused, gemm = median_ms(base["cuBLAS + residual"]), median_ms(base["cuBLAS GEMM"])
    results = []
    for launch in LAUNCH_SHAPES:
        try:
            err = _error(name, dtype, launch)
            ms = median_ms(_forms(name, dtype, launch)["fused"])
        except Exception as exc:  # noqa: BLE001 - a shape that needs more shared memory than the card has
            print(f"  {launch}: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
            continue
        results.append((ms, launch, err))
    print(f"linear_gated_residual sweep, {name} ({dtype}, {torch.cuda.get_device_name()}); cuBLAS + residual "
          f"{unfused:.3f} ms, cuBLAS GEMM alone {gemm:.3f} ms ({flops / gemm / 1e9:.0f} TFLOP/s)")
    for ms, launch, err in sorted(results, key=lambda r: r[0]):
        print(f"  {ms:8.3f} ms {flops / ms / 1e9:5.0f} TFLOP/s  {unfused / ms:5.2f}x unfused  {gemm / ms:5.2f}x GEMM"
              f"  err {err:.1e}  {launch}")


def time_shape(name, dtype) -> tuple[str, int, dict[str, float]]:
    flops, nbytes = _flops_bytes(name, dtype)
    times = {form: median_ms(fn) for form, fn in _forms(name, dtype).items()}
    gemm = flops / times["cuBLAS GEMM"] / 1e9
    fused = flops / times["fused"] / 1e9
    print(f"{name}: relative error {_error(name, dtype):.2e} against fp32; GEMM {gemm:.0f} TFLOP/s (cuBLAS), "
          f"fused {fused:.0f} TFLOP/s with its epilogue")
    return name, nbytes, times


def main() -> None:
    run_bench(__doc__.splitlines()[0], SHAPES, "linear_gated_residual", time_shape, sweep)


if __name__ == "__main__":
    main()
