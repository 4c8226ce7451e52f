"""Benchmark: the bidirectional gated delta rule kernel vs its reference and diffusers' scans, SANA-WM shapes.

Run on a CUDA machine from the repository root: `python -m sana.kernels.gdn.bench` (options: --shapes NAME...,
--dtype bf16|fp16|fp32). Inputs as the main branch feeds them: q, k, v the views of one fused projection,
separate plain q, k for the normaliser, beta in the model dtype, decay fp32. The kernel runs at each of its
dot precisions ("tf32x3" is the default); "diffusers" is `SanaWMBidirectionalGDNAttention` (two
`torch_chunk_sana_gdn` scans, fp32, with its flips and permutes) where it fits in memory; the second table is
the numerator-only op (the camera branch). The "GB/s" columns read TFLOP/s of the kernel's arithmetic: the
frame products W_t, U_t (and the normaliser's W^p_t) and the read, 2 D^2 S each a frame, and the scan, 2 D^3
a frame and direction.
"""

from __future__ import annotations

import torch

from .._bench import median_ms, parse_args, print_table
from .reference import gdn_bidirectional_reference
from .triton import PRECISIONS, gdn_bidirectional

# name: (batch, latent frames, tokens a frame, heads, head dim); 704 x 1280 is 22 x 40 latent tokens a frame.
SHAPES = {
    "wm-704x1280-161f": (2, 21, 22 * 40, 20, 112),
    "wm-704x1280-961f": (2, 121, 22 * 40, 20, 112),
}


def _inputs(b: int, t: int, s: int, h: int, d: int, dtype: torch.dtype):
    n = t * s
    q, k, v = torch.randn(b, n, 3, h, d, device="cuda", dtype=dtype).unbind(2)  # [B, N, H, D] views
    k.mul_((d * s) ** -0.5)  # SANA-WM scales its keys by D^-1/2 S^-1/2
    q_plain = torch.rand(b, n, h, d, device="cuda", dtype=dtype)
    k_plain = torch.rand(b, n, h, d, device="cuda", dtype=dtype) * (d * s) ** -0.5
    beta = torch.rand(b, n, h, device="cuda", dtype=dtype)
    decay = 0.5 + 0.5 * torch.rand(b, t, h, device="cuda")
    return q, k, v, beta, decay, q_plain, k_plain


def _diffusers_op(q_plain, k_plain, v, beta, decay):
    """diffusers' module on the same tensors (no RoPE: its numerator reads the plain q, k; the same work)."""
    from diffusers.models.transformers.transformer_sana_wm import SanaWMBidirectionalGDNAttention

    b, n, h, d = v.shape
    t = decay.shape[1]
    attn = SanaWMBidirectionalGDNAttention(eps=1e-8)
    beta_bhts = beta.reshape(b, t, n // t, h).permute(0, 3, 1, 2)  # [B, H, T, S]
    k_unscaled = k_plain * (d * (n // t)) ** 0.5  # the module scales the keys itself
    recall = torch.zeros(1, device=v.device)
    return lambda: attn(q_plain, k_unscaled, v, beta_bhts, decay.permute(0, 2, 1), recall, t)


def _time_or_oom(fn) -> float:
    try:
        return median_ms(fn)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return float("nan")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], list(SHAPES))
    main_rows, camera_rows = [], []
    for name in args.shapes:
        b, t, s, h, d = SHAPES[name]
        torch.manual_seed(0)
        q, k, v, beta, decay, q_plain, k_plain = _inputs(b, t, s, h, d, args.dtype)
        # print_table's "bytes" field, so that its GB/s column reads TFLOP/s
        flop_k = (8 * d * d * s + 4 * d**3) * t * b * h / 1000
        camera_flop_k = (6 * d * d * s + 4 * d**3) * t * b * h / 1000
        ref = gdn_bidirectional_reference(q, k, v.float(), beta, decay, q_plain, k_plain)  # fp32 out
        for precision in PRECISIONS:
            # fp32 v: an fp32 output, so the dots' error is not hidden under the output's rounding.
            out = gdn_bidirectional(q, k, v.float(), beta, decay, q_plain, k_plain, precision=precision)
            err = ((out.double() - ref.double()).norm() / ref.double().norm()).item()
            print(f"{name} {precision}: relative error {err:.2e} against the fp32 reference")
        del out, ref
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = gdn_bidirectional(q, k, v, beta, decay, q_plain, k_plain)
        torch.cuda.synchronize()
        extra = (torch.cuda.max_memory_allocated() - before - out.numel() * out.element_size()) / 2**20
        print(f"{name}: {extra:.0f} MiB of scratch besides the output")
        del out
        times = {f"triton-{p}": median_ms(lambda p=p: gdn_bidirectional(q, k, v, beta, decay, q_plain, k_plain,
                                                                         precision=p)) for p in PRECISIONS}
        times["reference"] = _time_or_oom(lambda: gdn_bidirectional_reference(q, k, v, beta, decay, q_plain, k_plain))
        try:
            times["diffusers"] = _time_or_oom(_diffusers_op(q_plain, k_plain, v, beta, decay))
        except ImportError:
            times["diffusers"] = float("nan")
        main_rows.append((name, flop_k, times))
        camera = {f"triton-{p}": median_ms(lambda p=p: gdn_bidirectional(q, k, v, beta, decay, precision=p))
                  for p in PRECISIONS}
        camera["reference"] = _time_or_oom(lambda: gdn_bidirectional_reference(q, k, v, beta, decay))
        camera_rows.append((name, camera_flop_k, camera))
        del q, k, v, beta, decay, q_plain, k_plain
        torch.cuda.empty_cache()
    print()
    print_table(f"gdn_bidirectional, main branch ({args.dtype}); 'GB/s' reads TFLOP/s", main_rows)
    print_table(f"gdn_bidirectional, camera branch: numerator only ({args.dtype}); 'GB/s' reads TFLOP/s",
                camera_rows)


if __name__ == "__main__":
    main()
