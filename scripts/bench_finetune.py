"""Fine-tuning step time and peak memory at SANA 1.6B's real config (random weights, bf16, gradient
checkpointing): our LoRA trainer against the recipe of diffusers' examples/dreambooth/train_dreambooth_lora_sana.py
with the same peft config, on one GPU. Under torchrun, our trainer alone on every GPU (DDP for LoRA, FSDP2 for
`--mode full`), for scaling.

    python scripts/bench_finetune.py --diffusers            # one GPU: ours vs diffusers' recipe
    python scripts/bench_finetune.py --diffusers --compile  # and our step compiled (fixed shapes, one graph)
    torchrun --standalone --nproc-per-node 2 scripts/bench_finetune.py   # ours on 2 GPUs
    python scripts/bench_finetune.py --mode full            # full fine-tuning (FSDP2 under torchrun)

Prints one JSON line (rank 0). Batch assembly from cached features is part of our step, as in real training.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGETS = ["to_q", "to_k", "to_v"]  # diffusers' script default


def features(model: str, count: int, res: int, text_tokens: int = 300, seed: int = 0):
    """Random cached features in the shapes `model` trains on."""
    from sana.registry import get_spec

    spec = get_spec(model)
    gen = torch.Generator().manual_seed(seed)
    side = res // int(spec.extra.get("vae_factor", 32))
    channels, text_dim = spec.transformer["in_channels"], spec.transformer["caption_channels"]
    latents = [torch.randn(channels, side, side, generator=gen) for _ in range(count)]
    texts = [torch.randn(text_tokens, text_dim, generator=gen) for _ in range(count)]
    return latents, texts


def timed(step, warmup: int, steps: int, profile: str | None = None) -> tuple[float, float]:
    """Median seconds of one step, and the peak memory (GiB) over the timed steps (0 on the CPU). With `profile`
    (a label), three more steps run under torch.profiler and their top kernels go to stderr."""
    cuda = torch.cuda.is_available()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profiler(activities=activities) as prof:
            for _ in range(3):
                step()
            sync()
        sort = "cuda_time_total" if cuda else "cpu_time_total"
        print(f"== {profile}: 3 steps\n" + prof.key_averages().table(sort_by=sort, row_limit=18, max_name_column_width=60),
              file=sys.stderr)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0)


def ours(args, compiled: bool = False) -> dict:
    from sana.models.transformer import SanaTransformer, TransformerConfig
    from sana.registry import get_spec
    from sana.training.config import TrainConfig
    from sana.training.trainer import Trainer

    config = TransformerConfig.from_dict(get_spec(args.model).transformer)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(data="-", out=out, model_dir="-", mode=args.mode, lora_rank=args.rank, lora_alpha=args.rank,
                          lora_targets=TARGETS, batch_size=args.batch, resolution=args.res, steps=10**6,
                          precision=args.precision, gradient_checkpointing=not args.no_checkpointing,
                          device=args.device, compile=compiled)
        trainer = Trainer(cfg)
        trainer.use_features(*features(args.model, args.batch * trainer.world.size * 4, args.res))
        impl = "sana+compile" if compiled else "sana"
        seconds, peak = time_trainer(trainer, SanaTransformer, config, args, f"{impl} {args.mode}")
        world = trainer.world.size
    return {"impl": impl, "mode": args.mode, "gpus": world, "step_s": seconds, "peak_gib": peak,
            "samples_per_s": args.batch * world / seconds}


def time_trainer(trainer, model_class, config, args, label: str) -> tuple[float, float]:
    """Our optimizer step on a fresh `model_class(config)` (random weights, bf16) in `trainer`, whose features are
    set: `timed`'s (median seconds, peak GiB)."""
    torch.manual_seed(0)
    with torch.device(trainer.device):
        model = model_class(config).to(torch.bfloat16)
    trainer.build(model)
    return timed(trainer._optimizer_step, args.warmup, args.steps, args.profile and label)


def diffusers_lora_step(model, latents, texts, args, *, shift: float, checkpointing: bool = True):
    """The math of train_dreambooth_lora_sana.py's step on the diffusers DiT `model` (image or video): frozen base
    in the compute dtype, fp32 LoRA (cast_training_params), gradient checkpointing, logit-normal timesteps on
    FlowMatchEulerDiscreteScheduler(shift), autocast. Returns the step to time."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.training_utils import cast_training_params, compute_density_for_timestep_sampling
    from peft import LoraConfig

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    model.requires_grad_(False)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian", target_modules=TARGETS))
    cast_training_params(model, dtype=torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    x0 = torch.stack(latents).to(args.device, dtype)  # [B, C, h, w] or [B, C, F', h, w]
    embeds = torch.stack(texts).to(args.device, dtype)
    mask = torch.ones(embeds.shape[:2], device=args.device, dtype=torch.long)
    sigmas_all, timesteps_all = scheduler.sigmas.to(args.device), scheduler.timesteps.to(args.device)

    def step():
        noise = torch.randn_like(x0)
        u = compute_density_for_timestep_sampling("logit_normal", x0.shape[0], logit_mean=0.0, logit_std=1.0)
        indices = (u * scheduler.config.num_train_timesteps).long().to(args.device)
        sigmas = sigmas_all[indices].to(x0.dtype).view(-1, *(1,) * (x0.dim() - 1))
        noisy = (1.0 - sigmas) * x0 + sigmas * noise
        with torch.autocast(args.device, dtype=dtype, enabled=dtype != torch.float32):
            pred = model(hidden_states=noisy, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                         timestep=timesteps_all[indices], return_dict=False)[0]
        loss = torch.mean(((pred.float() - (noise - x0).float()) ** 2).reshape(x0.shape[0], -1), 1).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    return step


def diffusers_recipe(args) -> dict:
    """diffusers' LoRA recipe (`diffusers_lora_step`) on its SANA DiT, with the flow shift of 3 its script uses."""
    from diffusers import SanaTransformer2DModel

    from sana.registry import get_spec

    cfg = {k: v for k, v in get_spec(args.model).transformer.items() if not k.startswith("_")}
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.precision]
    torch.manual_seed(0)
    with torch.device(args.device):
        model = SanaTransformer2DModel(**cfg).to(dtype)
    step = diffusers_lora_step(model, *features(args.model, args.batch, args.res), args, shift=3.0,
                               checkpointing=not args.no_checkpointing)
    seconds, peak = timed(step, args.warmup, args.steps, args.profile and "diffusers lora")
    return {"impl": "diffusers", "mode": "lora", "gpus": 1, "step_s": seconds, "peak_gib": peak, "samples_per_s": args.batch / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sana-1.6b")
    parser.add_argument("--res", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--mode", choices=("lora", "full"), default="lora")
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--diffusers", action="store_true", help="also time diffusers' recipe (one GPU only)")
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also print each side's top kernels (stderr)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test of the script")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--compile", action="store_true",
                        help="also time our step under torch.compile (its compilation is in the warm-up steps)")
    args = parser.parse_args()
    rows = [ours(args)]
    if args.compile:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        rows.append(ours(args, compiled=True))
    rank = int(os.environ.get("RANK", "0"))
    if args.diffusers and args.mode == "lora" and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        torch.cuda.empty_cache()
        rows.append(diffusers_recipe(args))
    from sana.training import distributed

    distributed.teardown()
    if rank == 0:
        device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
        for row in rows:
            print(json.dumps({"device": device, "model": args.model, "res": args.res, "batch_per_gpu": args.batch,
                              "lora_rank": args.rank if args.mode == "lora" else None, "checkpointing": not args.no_checkpointing, **row}))


if __name__ == "__main__":
    main()
