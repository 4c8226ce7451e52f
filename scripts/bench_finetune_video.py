"""A SANA-Video LoRA step at the real 2B config (random weights, bf16, gradient checkpointing, 480p, 81 frames):
our trainer against the same step on diffusers' `SanaVideoTransformer3DModel` with diffusers' LoRA training recipe
(train_dreambooth_lora_sana.py's math: peft adapter, bf16 frozen base, fp32 LoRA, logit-normal timesteps on a
shifted flow-matching scheduler, autocast). diffusers ships no SANA-Video training script, so that recipe is the
nearest one of its own.

    python scripts/bench_finetune_video.py --diffusers                # one GPU: ours vs diffusers' step
    python scripts/bench_finetune_video.py --model nano-video --width 128 --height 128 --frames 17 --device cpu --steps 1

Prints one JSON line a side. Batch assembly from cached features is part of our step, as in real training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_finetune import TARGETS, diffusers_lora_step, time_trainer, timed  # noqa: E402  (the image benchmark's)


def features(spec, count: int, width: int, height: int, frames: int, text_tokens: int = 300, seed: int = 0):
    """Random cached features in the shapes a clip of frames x height x width trains on (normalised Wan latents)."""
    vae = spec.extra.get("vae", {})
    spatial, temporal = int(vae.get("scale_factor_spatial", 8)), int(vae.get("scale_factor_temporal", 4))
    gen = torch.Generator().manual_seed(seed)
    shape = (spec.transformer["in_channels"], (frames - 1) // temporal + 1, height // spatial, width // spatial)
    latents = [torch.randn(shape, generator=gen) for _ in range(count)]
    texts = [torch.randn(text_tokens, spec.transformer["caption_channels"], generator=gen) for _ in range(count)]
    return latents, texts


def ours(args, spec) -> dict:
    from sana.models.video_transformer import SanaVideoTransformer, VideoTransformerConfig
    from sana.training.config import TrainConfig
    from sana.training.video_trainer import VideoTrainer

    config = VideoTransformerConfig.from_dict(spec.transformer)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(data="-", out=out, model_dir="-", mode="lora", lora_rank=args.rank, lora_alpha=args.rank,
                          lora_targets=TARGETS, batch_size=args.batch, resolution=args.height, steps=10**6,
                          precision=args.precision, device=args.device)
        trainer = VideoTrainer(cfg)
        trainer.use_features(*features(spec, args.batch * 4, args.width, args.height, args.frames),
                             flow_shift=args.shift)
        seconds, peak = time_trainer(trainer, SanaVideoTransformer, config, args, "sana video lora")
    return {"impl": "sana", "step_s": seconds, "peak_gib": peak, "clips_per_s": args.batch / seconds}


def diffusers_step(args, spec) -> dict:
    from diffusers import SanaVideoTransformer3DModel

    cfg = {k: v for k, v in spec.transformer.items() if not k.startswith("_")}
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    torch.manual_seed(0)
    with torch.device(args.device):
        model = SanaVideoTransformer3DModel(**cfg).to(dtype)
    step = diffusers_lora_step(model, *features(spec, args.batch, args.width, args.height, args.frames), args,
                               shift=args.shift)
    seconds, peak = timed(step, args.warmup, args.steps, args.profile and "diffusers video lora")
    return {"impl": "diffusers", "step_s": seconds, "peak_gib": peak, "clips_per_s": args.batch / seconds}


def main() -> None:
    from sana.registry import get_spec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="video-2b-480p")
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--shift", type=float, default=8.0, help="flow shift of the timestep sampling")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--diffusers", action="store_true", help="also time diffusers' step")
    parser.add_argument("--profile", action="store_true", help="also print each side's top kernels (stderr)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test of the script")
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()
    spec = get_spec(args.model)
    rows = [ours(args, spec)]
    if args.diffusers:
        if args.device == "cuda":
            torch.cuda.empty_cache()
        rows.append(diffusers_step(args, spec))
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    for row in rows:
        print(json.dumps({"device": device, "model": args.model, "size": f"{args.width}x{args.height}",
                          "frames": args.frames, "batch": args.batch, "lora_rank": args.rank, **row}))


if __name__ == "__main__":
    main()
