"""Where a DiT forward spends its GPU time: our SANA 1.6B image DiT (a denoising step at --px, batch 2, the text's
keys and values made once, as `sana gen` runs it), SANA-Video 2B (480p, 81 frames) or SANA-WM 2.6B (704x1280, 161
frames) forward at batch 2, real config, random weights, bf16, under torch.profiler.

Run on a CUDA machine from the repository root (diffusers installed: the weights come from its classes):
`python scripts/profile_dit.py image|video|world [--px 1024] [--frames N] [--rows 40]`. Prints the kernels by
total GPU time over three forwards, then the share of the forward that GEMMs, attention, the GDN kernel and the rest
take. Kernel times only: the gaps between kernels, which a CUDA graph removes, are not in them.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from sana.benchmarks.clip_dit import video_inputs, video_pair, world_inputs, world_pair
from sana.benchmarks.image import random_dit_pair

GROUPS = {  # kernel-name fragments -> a group, first match wins
    "gemm": ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas"),
    "linear attention": ("_rope_kv", "_rope_out", "linear_attention", "_kv_partial"),
    "Mix-FFN middle": ("mixffn",),
    "attention (softmax)": ("flash", "fmha", "attention"),
    "GDN": ("_frame_product", "_scan_kernel", "_read_kernel"),
    "convolution": ("conv", "implicit", "winograd"),
    "norm / elementwise": ("norm", "elementwise", "vectorized", "reduce", "fused"),
}


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, fragments in GROUPS.items():
        if any(f in lowered for f in fragments):
            return group
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=["image", "video", "world"])
    parser.add_argument("--px", type=int, default=1024, help="image side (image)")
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--rows", type=int, default=40, help="kernels to list")
    args = parser.parse_args()
    if args.model == "image":
        ref, ours = random_dit_pair("sana-1.6b")
        side = args.px // 32
        x = torch.randn(2, 32, side, side, device="cuda", dtype=torch.bfloat16)
        t = torch.full((2,), 500.0, device="cuda")
        with torch.no_grad():
            context = ours.text_context(torch.randn(2, 300, 2304, device="cuda", dtype=torch.bfloat16),
                                        torch.ones(2, 300, device="cuda", dtype=torch.long))

        def forward():
            return ours(x, context, t)
    elif args.model == "video":
        cfg, ref, ours = video_pair()
        _, x, text, mask, t = video_inputs(cfg, args.frames or 81, 832, 480, 2)

        def forward():
            return ours(x, text, t, text_mask=mask)
    else:
        cfg, ref, ours = world_pair()
        _, x, timestep, text, mask, camera, plucker = world_inputs(cfg, args.frames or 161, 1280, 704, 2)

        def forward():
            return ours(x, timestep, text, mask, camera=camera, plucker=plucker)
    del ref
    torch.cuda.empty_cache()
    with torch.no_grad():
        for _ in range(2):  # compile the kernels, fill the allocator
            forward()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                forward()
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in events)
    print(f"{args.model}: {total / 3 / 1000:.1f} ms of GPU time a forward")
    print(f"{'ms/fwd':>8} {'share':>6} {'calls':>6}  kernel")
    for e in events[: args.rows]:
        print(f"{e.device_time_total / 3000:8.2f} {e.device_time_total / total:6.1%} {e.count // 3:6d}  {e.key[:110]}")
    shares: dict[str, float] = {}
    for e in events:
        shares[group_of(e.key)] = shares.get(group_of(e.key), 0.0) + e.device_time_total
    print()
    for group, us in sorted(shares.items(), key=lambda kv: -kv[1]):
        print(f"{group:>22}: {us / 3000:8.2f} ms ({us / total:.1%})")


if __name__ == "__main__":
    main()
