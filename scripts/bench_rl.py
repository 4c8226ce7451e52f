"""RL rollout and round speed at SANA 1.6B's real config (random weights, 1024 px, bf16) on one GPU: images a
second of the cheap exploration (fp8 block linears where the GPU has fp8 GEMMs, `--explore-steps`) against
full-quality rollouts (bf16, `--rollout-steps`), and one whole round (explore `--candidates`, keep `--keep`,
regenerate, one DiffusionNFT optimizer step with LoRA r32 and the KL term) with its time and peak memory.

    python scripts/bench_rl.py                         # SANA 1.6B, 1024 px, 96 candidates, 24 kept, 1 prompt
    python scripts/bench_rl.py --prompts 6 --json out.json
    python scripts/bench_rl.py --tiny                  # a tiny random config on the CPU: checks the path only

Text embeddings are random (no Gemma), and the round scores latents directly with a cheap stand-in reward (no
VAE decode, no reward model): what is timed is the DiT's share of a round, the part Sol-RL's fp8 exploration
speeds up. Sol-RL reports up to 2.4x faster rollouts (NVFP4 on Blackwell). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = dict(in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8, num_layers=2,
            num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=24,
            mlp_ratio=2.5, sample_size=8, patch_size=1)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sana-1.6b", help="registry model whose DiT config is used")
    parser.add_argument("--res", type=int, default=1024)
    parser.add_argument("--candidates", type=int, default=96)
    parser.add_argument("--keep", type=int, default=24)
    parser.add_argument("--explore-steps", type=int, default=6)
    parser.add_argument("--rollout-steps", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=1, help="prompts a round")
    parser.add_argument("--rollout-batch", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=16, help="samples a training forward")
    parser.add_argument("--tiny", action="store_true", help="a tiny random DiT on the CPU (path check)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--json", default=None, help="also write the result here")
    return parser.parse_args(argv)


def build_model(args, device: torch.device, dtype: torch.dtype):
    from sana.models.transformer import SanaTransformer, TransformerConfig
    from sana.registry import get_spec

    if args.tiny:
        config, factor = TINY, 4
    else:
        spec = get_spec(args.model)
        config, factor = spec.transformer, int(spec.extra.get("vae_factor", 32))
    model = SanaTransformer(TransformerConfig.from_dict(dict(config)))
    model.initialize_weights(torch.Generator().manual_seed(0))
    return model.to(device, dtype), factor


def components(model, args, factor: int, device: torch.device):
    """Random text rows and a latent-space stand-in reward (`Components` of the RL loop)."""
    from sana.text import PromptEmbeddings
    from sana.training.rl.loop import Components

    text_dim, tokens = model.config.caption_channels, 16 if args.tiny else 300
    gen = torch.Generator().manual_seed(1)
    table = torch.randn(64, tokens, text_dim, generator=gen)

    def encode(prompts: list[str]):
        rows = torch.stack([table[int(p.split()[-1]) % 64] for p in prompts]).to(device)
        mask = torch.ones(rows.shape[:2], dtype=torch.long, device=device)
        return PromptEmbeddings(rows, mask), PromptEmbeddings(torch.zeros_like(rows[:1]), mask[:1])

    def decode(latents: torch.Tensor) -> torch.Tensor:  # the first three channels stand in for RGB
        return torch.sigmoid(latents[:, :3].float())

    def reward(images, prompts, metadata):
        score = images[:, 0].mean(dim=(1, 2)) - images[:, 1].mean(dim=(1, 2))
        return score, {"stand-in": score}

    side = args.res // factor
    return Components(encode=encode, decode=decode, reward=reward, labels=["stand-in"],
                      latent_shape=(model.config.in_channels, side, side), flow_shift=3.0, scheduler_config={})


def images_per_second(model, args, comps, steps: int, device: torch.device, dtype: torch.dtype) -> float:
    from sana.training.rl.rollout import sample

    text, _ = comps.encode([f"prompt {i}" for i in range(args.rollout_batch)])
    run = lambda: sample(model, text, list(range(args.rollout_batch)), steps=steps, latent_shape=comps.latent_shape,
                         flow_shift=3.0, scheduler_config={}, dtype=dtype)
    run()  # warm-up (kernels, autotuning)
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return args.rollout_batch / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from sana import ops
    from sana.training.rl.config import RLConfig
    from sana.training.rl.loop import RLTrainer
    from sana.training.rl.prompts import Prompt, PromptSource
    from sana.training.rl.rollout import explorer_copy

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.tiny:
        args.res = args.res if args.res != 1024 else 32
    model, factor = build_model(args, device, dtype)
    comps = components(model, args, factor, device)

    # 1. Images a second: the cheap explorer against full-quality rollouts, one batch of each after a warm-up.
    fp8 = ops.fp8_supported(device) and dtype == torch.bfloat16
    explorer = explorer_copy(model.eval().requires_grad_(False), fp8)
    explore_ips = images_per_second(explorer, args, comps, args.explore_steps, device, dtype)
    full_ips = images_per_second(model, args, comps, args.rollout_steps, device, dtype)
    del explorer

    # 2. One round through the RL trainer (after a warm-up round), its time and peak memory.
    with tempfile.TemporaryDirectory() as out:
        cfg = RLConfig(data="bench", out=out, model_dir=out, resolution=args.res, device=str(device),
                       candidates=args.candidates, keep_seeds=args.keep, explore_steps=args.explore_steps,
                       rollout_steps=args.rollout_steps, prompts_per_round=args.prompts, rollout_batch=args.rollout_batch,
                       batch_size=args.batch_size, val_count=0, precision="bf16" if dtype == torch.bfloat16 else "fp32")
        trainer = RLTrainer(cfg)
        trainer.use_components(comps, source=PromptSource([Prompt(f"prompt {i}") for i in range(64)], "bench"))
        trainer.build(model.requires_grad_(True).train())
        trainer._sync_old()
        trainer.train_round(0)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        stats, _ = trainer.train_round(1)
        sync(device)
        round_s = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0

    result = {"model": "tiny" if args.tiny else args.model, "res": args.res, "device": torch.cuda.get_device_name(device)
              if device.type == "cuda" else "cpu", "explore": "fp8" if fp8 else str(dtype).split(".")[-1],
              "explore_steps": args.explore_steps, "rollout_steps": args.rollout_steps,
              "explore_images_per_s": round(explore_ips, 3), "rollout_images_per_s": round(full_ips, 3),
              "explore_speedup": round(explore_ips / full_ips, 3), "candidates": args.candidates, "keep": args.keep,
              "prompts": args.prompts, "round_s": round(round_s, 3), "round_images": stats["images"],
              "peak_memory_gib": round(peak, 2)}
    print(f"exploration ({result['explore']}, {args.explore_steps} steps): {explore_ips:.2f} img/s; full quality "
          f"({str(dtype).split('.')[-1]}, {args.rollout_steps} steps): {full_ips:.2f} img/s; "
          f"{result['explore_speedup']:.2f}x", file=sys.stderr)
    print(f"one round ({args.prompts} prompt(s), {args.candidates} candidates, {args.keep} kept): {round_s:.2f} s, "
          f"peak {peak:.1f} GiB", file=sys.stderr)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
