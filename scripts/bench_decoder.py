"""The DC-AE f32c32 decoder with each conv's bias deferred to the Triton pass after it, against the same decoder
with PyTorch adding the biases (cuDNN's conv, then a bias pass and an activation pass), on one GPU.

Random weights at the real config (diffusers' AutoencoderDC builds them), bf16, whole-image decodes; the two
variants are timed in alternating rounds (`interleaved_ms`: medians of >= 10 calls a round), with the relative
difference of their images. About a minute on an H100.

    python scripts/bench_decoder.py                  # 1024 and 4096 px
    python scripts/bench_decoder.py --px 2048
"""

from __future__ import annotations

import argparse
import sys
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
    from sana.loading import vae_decoder_from_state

    torch.manual_seed(0)
    reference = AutoencoderDC(**DCAE_F32C32).to("cuda", torch.bfloat16).eval()
    decoder = vae_decoder_from_state(dict(reference.config), reference.state_dict(), device="cuda")
    del reference
    defers = ops.defers_conv_bias

    def decode(z, fused: bool):
        ops.defers_conv_bias = defers if fused else (lambda x: False)
        try:
            with torch.no_grad():
                return decoder.decode(z)
        finally:
            ops.defers_conv_bias = defers

    print(f"DC-AE f32c32 decode, bf16, whole image [{torch.cuda.get_device_name()}, torch {torch.__version__}]")
    print(f"{'px':>6} {'bias deferred ms':>18} {'PyTorch bias ms':>17} {'ratio':>7} {'rel. diff':>10}")
    for px in args.px:
        z = torch.randn(1, 32, px // 32, px // 32, device="cuda", dtype=torch.bfloat16)
        fused, plain = decode(z, True).float(), decode(z, False).float()
        diff = ((fused - plain).norm() / plain.norm()).item()
        del fused, plain
        times = interleaved_ms({"fused": lambda: decode(z, True), "plain": lambda: decode(z, False)}, args.rounds)
        print(f"{px:>6} {times['fused']:>18.2f} {times['plain']:>17.2f} {times['plain'] / times['fused']:>6.3f}x "
              f"{diff:>10.1e}")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
