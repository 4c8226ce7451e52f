"""The DC-AE f32c32 decoder as `sana gen` runs it on CUDA (each conv's bias deferred to the Triton pass after it,
the multiscale projections as one Triton pass) against the same decoder as before those two changes (PyTorch's
bias passes, two cuDNN convs a multiscale projection), on one GPU.

Random weights at the real config (diffusers' AutoencoderDC builds them), bf16, whole-image decodes. Two numbers
a size and variant: a decode's time in steady state (alternating rounds, `interleaved_ms`: medians of >= 10 calls a
round), and a first decode on a new thread, which is what a fresh process's first image pays: PyTorch keeps cuDNN's
execution plans per thread, so a new thread builds them again (median of three threads; the Triton kernels are
compiled by then, as with a warm Triton cache). About two minutes on an H100.

    python scripts/bench_decoder.py                  # 1024 and 4096 px
    python scripts/bench_decoder.py --px 2048
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--px", type=int, nargs="+", default=[1024, 4096], help="image sides (multiples of 32)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.exit(1, "this benchmark needs a CUDA GPU\n")
    if any(px % 32 or px <= 0 for px in args.px):
        parser.exit(2, "error: --px takes positive multiples of 32\n")
    from diffusers import AutoencoderDC

    from sana import ops
    from sana.benchmarks.image import DCAE_F32C32, interleaved_ms
    from sana.kernels.multiscale.reference import multiscale_projection_reference
    from sana.loading import vae_decoder_from_state

    torch.manual_seed(0)
    reference = AutoencoderDC(**DCAE_F32C32).to("cuda", torch.bfloat16).eval()
    decoder = vae_decoder_from_state(dict(reference.config), reference.state_dict(), device="cuda")
    del reference
    current = {"defers_conv_bias": ops.defers_conv_bias, "multiscale_projection": ops.multiscale_projection}
    before = {"defers_conv_bias": lambda x: False, "multiscale_projection": multiscale_projection_reference}

    def decode(z, ops_of: dict):
        for name, fn in ops_of.items():
            setattr(ops, name, fn)
        try:
            with torch.no_grad():
                return decoder.decode(z)
        finally:
            for name, fn in current.items():
                setattr(ops, name, fn)

    def first_decode_s(z, ops_of: dict) -> float:
        took = []

        def run():
            torch.cuda.synchronize()
            start = time.perf_counter()
            decode(z, ops_of)
            torch.cuda.synchronize()
            took.append(time.perf_counter() - start)

        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        return took[0]

    print(f"DC-AE f32c32 decode, bf16, whole image [{torch.cuda.get_device_name()}, torch {torch.__version__}]")
    print(f"{'px':>6} {'ours ms':>9} {'before ms':>10} {'ratio':>7} {'ours first s':>13} {'before first s':>15} "
          f"{'rel. diff':>10}")
    for px in args.px:
        z = torch.randn(1, 32, px // 32, px // 32, device="cuda", dtype=torch.bfloat16)
        ours, plain = decode(z, current).float(), decode(z, before).float()  # also compiles the Triton kernels
        diff = ((ours - plain).norm() / plain.norm()).item()
        del ours, plain
        first = {name: statistics.median(first_decode_s(z, ops_of) for _ in range(3))
                 for name, ops_of in (("ours", current), ("before", before))}
        times = interleaved_ms({"ours": lambda: decode(z, current), "before": lambda: decode(z, before)}, args.rounds)
        print(f"{px:>6} {times['ours']:>9.2f} {times['before']:>10.2f} {times['before'] / times['ours']:>6.3f}x "
              f"{first['ours']:>13.3f} {first['before']:>15.3f} {diff:>10.1e}")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
