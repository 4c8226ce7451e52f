"""Whole clips after load, ours against diffusers' SanaVideoPipeline / SanaWMPipeline on the same modules at their
real sizes (random weights, bf16, one GPU, one run). Nothing here prints.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .clip_dit import _require_cuda, video_pair, world_pair


@dataclass
class ClipRow:
    model: str
    frames: int
    width: int
    height: int
    steps: int
    seconds: dict[str, float] = field(default_factory=dict)  # implementation -> seconds a clip after load
    phases: dict[str, float] = field(default_factory=dict)  # ours: encode / denoise / decode seconds
    peak_gib: dict[str, float] = field(default_factory=dict)
    psnr_db: float | None = None  # ours against diffusers, same seed (bf16 both sides, so not identical)


def _timed(fn: Callable[[], object]) -> tuple[object, float, float]:
    """(result, seconds, peak GiB) of one call."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with torch.no_grad():
        result = fn()
    torch.cuda.synchronize()
    return result, time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30


def _psnr(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse))


def _text_stack(instruction):
    """A random Gemma-2-2B (the real size) with a small local tokenizer, and that tokenizer."""
    from transformers import Gemma2Config, Gemma2Model

    from ..tokenizer import train_gemma_style_bpe
    from .image import GEMMA2_2B

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_gemma_style_bpe(["\n".join(instruction), "a red fox running through snow"], Path(tmp) / "tok")
    model = Gemma2Model(Gemma2Config(**GEMMA2_2B)).to("cuda", torch.bfloat16).eval()
    return tokenizer, model


def bench_video_clip(*, steps: int = 50, frames: int = 81, width: int = 832, height: int = 480,
                     name: str = "video-2b-480p") -> ClipRow:
    """A whole text-to-video clip after load (Gemma-2-2B, the 2B DiT, the Wan 2.1 VAE at their real sizes, random
    weights, bf16, CFG 6, flow DPM-Solver shift 8): diffusers' SanaVideoPipeline against ours on the same modules,
    each timed once after a one-step warm-up."""
    from diffusers import AutoencoderKLWan, SanaVideoPipeline

    from ..pipelines.sizes import video_vae_geometry
    from ..pipelines.video import VideoPipeline, VideoRequest
    from ..pipelines.video_vae import VideoVAE
    from ..sampling import make_scheduler
    from ..text import VIDEO_COMPLEX_HUMAN_INSTRUCTION, TextEncoder

    _require_cuda()
    cfg, ref, ours = video_pair(name)
    tokenizer, text_model = _text_stack(VIDEO_COMPLEX_HUMAN_INSTRUCTION)
    torch.manual_seed(1)
    vae = AutoencoderKLWan().to("cuda", torch.bfloat16).eval()
    scheduler = make_scheduler("flow-dpm", flow_shift=8.0, reference=True)
    theirs = SanaVideoPipeline(tokenizer=tokenizer, text_encoder=text_model, vae=vae, transformer=ref,
                               scheduler=scheduler)
    theirs.set_progress_bar_config(disable=True)
    geometry = video_vae_geometry({"_class_name": "AutoencoderKLWan", **dict(vae.config)})
    mine = VideoPipeline(transformer=ours, text_encoder=TextEncoder(tokenizer, text_model,
                                                                    instruction=VIDEO_COMPLEX_HUMAN_INSTRUCTION),
                         vae=VideoVAE(vae, geometry), scheduler_config=dict(scheduler.config), device="cuda",
                         dtype=torch.bfloat16)
    prompt = "a red fox running through fresh snow at dawn"
    row = ClipRow(name, frames, width, height, steps)

    def run_diffusers(n: int):
        return theirs(prompt=prompt + " motion score: 30.", frames=frames, width=width, height=height,
                      num_inference_steps=n, guidance_scale=6.0, generator=torch.Generator("cpu").manual_seed(0),
                      output_type="np", use_resolution_binning=False).frames[0]

    def run_ours(n: int):
        request = VideoRequest(prompt=prompt, seeds=[0], width=width, height=height, frames=frames, steps=n,
                               guidance=6.0, sampler="flow-dpm", flow_shift=8.0, motion_score=30)
        return mine.generate(request)

    run_diffusers(1)
    run_ours(1)  # warm-up: kernels compiled, allocator caches filled
    frames_theirs, row.seconds["diffusers"], row.peak_gib["diffusers"] = _timed(lambda: run_diffusers(steps))
    result, row.seconds["ours"], row.peak_gib["ours"] = _timed(lambda: run_ours(steps))
    row.phases = dict(result.timings)
    row.psnr_db = _psnr(result.videos[0].numpy(), (frames_theirs * 255).round())
    return row


def bench_world_clip(*, steps: int = 60, frames: int = 161) -> ClipRow:
    """A whole SANA-WM clip after load (Gemma-2-2B, the 2.6B DiT, the LTX-2 VAE at their real sizes, random
    weights, bf16, CFG 5, flow Euler, a forward dolly with a turn): diffusers' SanaWMPipeline against ours on the
    same modules, each timed once after a one-step warm-up."""
    import numpy as np
    from diffusers import AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler, SanaWMPipeline
    from PIL import Image

    from ..camera import resolve_camera
    from ..pipelines.sizes import video_vae_geometry
    from ..pipelines.video_vae import VideoVAE
    from ..pipelines.world import WorldPipeline, WorldRequest
    from ..text import WORLD_COMPLEX_HUMAN_INSTRUCTION, TextEncoder

    _require_cuda()
    cfg, ref, ours = world_pair()
    tokenizer, text_model = _text_stack(WORLD_COMPLEX_HUMAN_INSTRUCTION)
    torch.manual_seed(1)
    vae = AutoencoderKLLTX2Video(spatial_compression_ratio=32, temporal_compression_ratio=8)
    vae = vae.to("cuda", torch.bfloat16).eval()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=9.8)
    theirs = SanaWMPipeline(tokenizer=tokenizer, text_encoder=text_model, vae=vae, transformer=ref,
                            scheduler=scheduler)
    theirs.set_progress_bar_config(disable=True)
    geometry = video_vae_geometry({"_class_name": "AutoencoderKLLTX2Video", **dict(vae.config)})
    mine = WorldPipeline(transformer=ours, text_encoder=TextEncoder(tokenizer, text_model,
                                                                    instruction=WORLD_COMPLEX_HUMAN_INSTRUCTION,
                                                                    lowercase=False),
                         vae=VideoVAE(vae, geometry), scheduler_config=dict(scheduler.config), device="cuda",
                         dtype=torch.bfloat16)
    image = Image.fromarray((np.random.default_rng(0).random((704, 1280, 3)) * 255).astype(np.uint8))
    actions = f"w-{(frames - 1) // 2},wl-{frames - 1 - (frames - 1) // 2}"
    intrinsics = [1000.0, 1000.0, 640.0, 352.0]
    prompt = "a walk through a sunlit forest path"
    row = ClipRow("wm-2.6b", frames, 1280, 704, steps)

    def run_diffusers(n: int):
        return theirs(image, prompt, action=actions, intrinsics=intrinsics, num_frames=frames, num_inference_steps=n,
                      guidance_scale=5.0, generator=torch.Generator("cpu").manual_seed(0), output_type="np").frames

    camera = resolve_camera(actions=actions, image_size=(1280, 704), intrinsics=np.array(intrinsics),
                            num_frames=frames)

    def run_ours(n: int):
        request = WorldRequest(prompt=prompt, image=image, camera=camera, seeds=[0], steps=n, guidance=5.0,
                               flow_shift=9.8)
        return mine.generate(request)

    run_diffusers(1)
    run_ours(1)
    frames_theirs, row.seconds["diffusers"], row.peak_gib["diffusers"] = _timed(lambda: run_diffusers(steps))
    result, row.seconds["ours"], row.peak_gib["ours"] = _timed(lambda: run_ours(steps))
    row.phases = dict(result.timings)
    row.psnr_db = _psnr(result.videos[0].numpy(), (np.asarray(frames_theirs) * 255).round())
    return row
