"""DiT forward time at the real SANA configs (random weights, bf16): our engine vs diffusers eager, same GPU.

Usage: python benchmarks/dit_forward.py [--models sana-1.6b sprint-1.6b] [--px 1024 4096] [--batch 2]
Prints one row per case: ms (median of triton.testing.do_bench), TFLOP/s, ratio to diffusers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sana import ops  # noqa: E402
from sana.graphs import GraphedForward  # noqa: E402
from sana.loading import load_transformer  # noqa: E402
from sana.registry import get_spec  # noqa: E402


def dit_flops(cfg: dict, tokens: int, text_tokens: int, batch: int) -> float:
    """Matmul FLOPs of one forward (2 x MACs), the same count for both implementations."""
    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    dc = cfg["num_cross_attention_heads"] * cfg["cross_attention_head_dim"]
    hidden = int(cfg["mlp_ratio"] * d)
    hd = cfg["attention_head_dim"]
    per_token = (
        3 * d * d + d * d  # qkv + out
        + 2 * cfg["num_attention_heads"] * hd * hd * 2  # K^T V and q (K^T V), per token
        + d * dc + dc * d  # cross q + out
        + 2 * text_tokens * dc  # cross scores and values
        + d * 2 * hidden + 9 * 2 * hidden + hidden * d  # Mix-FFN
    )
    text = text_tokens * (cfg["caption_channels"] * d + d * d + cfg["num_layers"] * 2 * d * dc)
    return 2.0 * batch * (tokens * per_token * cfg["num_layers"] + text)


def main() -> None:
    import triton.testing
    from diffusers import SanaTransformer2DModel

    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["sana-1.6b"])
    parser.add_argument("--px", nargs="+", type=int, default=[1024, 4096])
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()} | torch {torch.__version__}")
    rows = []
    for name in args.models:
        cfg = {k: v for k, v in get_spec(name).transformer.items() if not k.startswith("_")}
        torch.manual_seed(0)
        ref = SanaTransformer2DModel(**cfg).to("cuda", torch.bfloat16).eval()
        with tempfile.TemporaryDirectory() as tmp:
            ref.save_pretrained(Path(tmp) / "transformer")
            ours = load_transformer(Path(tmp), dtype=torch.bfloat16, device="cuda")
        batch = 1 if cfg.get("guidance_embeds") else args.batch
        for px in args.px:
            side = px // 32
            x = torch.randn(batch, 32, side, side, device="cuda", dtype=torch.bfloat16)
            text = torch.randn(batch, 300, 2304, device="cuda", dtype=torch.bfloat16)
            mask = torch.ones(batch, 300, device="cuda", dtype=torch.long)
            t = torch.full((batch,), 500.0, device="cuda")
            g = torch.full((batch,), 0.45, device="cuda", dtype=torch.bfloat16) if cfg.get("guidance_embeds") else None
            def bench(fn):
                with torch.no_grad():
                    return triton.testing.do_bench(fn, warmup=200, rep=1000, return_mode="median")

            ms_ref = bench(lambda: ref(x, encoder_hidden_states=text, timestep=t, guidance=g,
                                       encoder_attention_mask=mask, return_dict=False))
            ops.set_kernels_enabled(False)
            ms_plain = bench(lambda: ours(x, text, t, text_mask=mask, guidance=g))
            ops.set_kernels_enabled(True)
            ms_kernels = bench(lambda: ours(x, text, t, text_mask=mask, guidance=g))
            graphed = GraphedForward(ours)
            ms_graph = bench(lambda: graphed(x, text, t, text_mask=mask, guidance=g))
            graphed.reset()
            flops = dit_flops(cfg, side * side, 300, batch)
            rows.append((name, px, batch, ms_ref, ms_plain, ms_kernels, ms_graph, flops))
        del ref, ours
        torch.cuda.empty_cache()
    print(f"{'model':<14}{'px':>6}{'batch':>6}{'diffusers':>11}{'torch ops':>11}{'kernels':>9}{'+graph':>9}"
          f"{'TFLOP/s':>9}{'% peak':>8}{'speed-up':>10}   (ms; peak = 790 TFLOP/s bf16)")
    for name, px, batch, ms_ref, ms_plain, ms_kernels, ms_graph, flops in rows:
        best = min(ms_kernels, ms_graph)
        tflops = flops / best / 1e9
        print(f"{name:<14}{px:>6}{batch:>6}{ms_ref:>11.2f}{ms_plain:>11.2f}{ms_kernels:>9.2f}{ms_graph:>9.2f}"
              f"{tflops:>9.0f}{100 * tflops / 790:>7.0f}%{ms_ref / best:>9.2f}x")

if __name__ == "__main__":
    main()
