"""A clip under a memory cap, run by the real CLI: a diffusers-format folder of the released model's size
(Gemma-2-2B, the DiT, the VAE; random weights, bf16) is written, then `sana video` / `sana world` runs on it with
`--max-vram`, and the clip's metadata gives back the plan it chose and the peak the CUDA allocator reached.

Run on a CUDA machine: `python -m sana.benchmarks.capped video --cap 16G --frames 81 --steps 10` (or `world --cap
24G --frames 161`). The cap is enforced by the allocator (`torch.cuda.set_per_process_memory_fraction`), so a clip
that completes has stayed under it; the number of steps changes the time, not the peak. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def write_video_model(folder: Path, name: str = "video-2b-480p") -> None:
    """SanaVideoPipeline's folder at the registry model's config: the 2B DiT, Gemma-2-2B, the Wan 2.1 VAE."""
    from diffusers import AutoencoderKLWan, SanaVideoPipeline, SanaVideoTransformer3DModel

    from .clip_runs import _text_stack
    from ..registry import get_spec
    from ..sampling import make_scheduler
    from ..text import VIDEO_COMPLEX_HUMAN_INSTRUCTION

    cfg = {k: v for k, v in get_spec(name).transformer.items() if not k.startswith("_")}
    tokenizer, text_model = _text_stack(VIDEO_COMPLEX_HUMAN_INSTRUCTION)
    with torch.device("cuda"):
        torch.manual_seed(0)
        transformer = SanaVideoTransformer3DModel(**cfg).to(torch.bfloat16)
        vae = AutoencoderKLWan().to(torch.bfloat16)
    pipe = SanaVideoPipeline(tokenizer=tokenizer, text_encoder=text_model, vae=vae, transformer=transformer,
                             scheduler=make_scheduler("flow-dpm", flow_shift=8.0, reference=True))
    pipe.save_pretrained(folder)


def write_world_model(folder: Path) -> None:
    """SanaWMPipeline's folder: the 2.6B DiT (class defaults, camera layers drawn), Gemma-2-2B, the LTX-2 VAE."""
    from diffusers import AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler, SanaWMPipeline

    from .clip_dit import world_pair
    from .clip_runs import _text_stack
    from ..text import WORLD_COMPLEX_HUMAN_INSTRUCTION

    _, transformer, _ = world_pair(with_ours=False)
    tokenizer, text_model = _text_stack(WORLD_COMPLEX_HUMAN_INSTRUCTION)
    with torch.device("cuda"):
        vae = AutoencoderKLLTX2Video(spatial_compression_ratio=32, temporal_compression_ratio=8).to(torch.bfloat16)
    pipe = SanaWMPipeline(tokenizer=tokenizer, text_encoder=text_model, vae=vae, transformer=transformer,
                          scheduler=FlowMatchEulerDiscreteScheduler(shift=9.8))
    pipe.save_pretrained(folder)


def first_image(path: Path, width: int, height: int) -> None:
    import numpy as np
    from PIL import Image

    pixels = (np.random.default_rng(0).random((height, width, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def run_capped(kind: str, cap: str, frames: int, steps: int, work: Path) -> dict:
    """Write the model folder, run the CLI under `cap`, and read back its plan and measured peak."""
    model = work / "model"
    start = time.perf_counter()
    (write_video_model if kind == "video" else write_world_model)(model)
    torch.cuda.empty_cache()
    written_s = time.perf_counter() - start
    out = work / "out"  # PNG frames: the GPU machines may lack the ffmpeg binary MP4 needs
    command = [sys.executable, "-m", "sana_cli", kind, "a red fox running through fresh snow", "--model", str(model),
               "--frames", str(frames), "--steps", str(steps), "--max-vram", cap, "--seed", "0", "-o", f"{out}/",
               "--format", "png"]
    if kind == "world":
        image = work / "first.png"
        first_image(image, 1280, 704)
        command += ["--image", str(image), "--actions", f"w-{(frames - 1) // 2},wl-{frames - 1 - (frames - 1) // 2}",
                    "--fov", "60"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    result = {"kind": kind, "cap": cap, "frames": frames, "steps": steps, "write_model_s": round(written_s, 1),
              "cli_s": round(time.perf_counter() - start, 1), "returncode": done.returncode,
              "cli_output": (done.stdout + done.stderr)[-3000:]}
    if done.returncode == 0:
        from ..outputs import read_metadata

        clips = [p for p in out.iterdir() if p.is_dir()]
        record = read_metadata(clips[0])
        result.update(memory=record.extra.get("memory"), timings=record.timings)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["video", "world"])
    parser.add_argument("--cap", required=True, help="--max-vram for the CLI, e.g. 16G")
    parser.add_argument("--frames", type=int, required=True)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(run_capped(args.kind, args.cap, args.frames, args.steps, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
