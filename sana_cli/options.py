"""Options shared by the generating commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer


def complete_model(incomplete: str) -> list[str]:
    """Shell completion of --model: the registry's names and aliases (no torch, no disk scan)."""
    from sana.registry import all_specs

    names = sorted({name for spec in all_specs() for name in (spec.name, *spec.aliases)})
    return [name for name in names if name.startswith(incomplete.lower())]


def check_device_name(name: str) -> str:
    """--device's spelling, checked while the arguments are parsed (torch, which knows the devices, loads later)."""
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise typer.BadParameter(f"unknown device '{name}': use auto, cuda, cuda:N, mps or cpu")
    return name


def check_guidance(value: float | None) -> float | None:
    """A guidance scale is a finite number >= 0 (NaN or infinity would only fail after the whole generation)."""
    import math

    if value is not None and not (math.isfinite(value) and value >= 0):
        raise typer.BadParameter(f"{value:g} is not a guidance scale: use a finite number >= 0")
    return value


def check_trigflow_time(value: float | None) -> float | None:
    """A TrigFlow time of SANA-Sprint's sampler lies in (0, pi/2]: pi/2 is pure noise, 0 the image."""
    import math

    if value is not None and not (math.isfinite(value) and 0 < value <= TRIGFLOW_MAX):
        raise typer.BadParameter(f"{value:g} is not a TrigFlow time: use a number in (0, {TRIGFLOW_MAX}]")
    return value


TRIGFLOW_MAX = 1.5708  # pi / 2, rounded as diffusers' SanaSprintPipeline default


def check_shift(value: float | None) -> float | None:
    """A flow shift is a finite number > 0 (the sigma schedule divides by it)."""
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"{value:g} is not a flow shift: use a finite number > 0")
    return value


Model = Annotated[Optional[str], typer.Option("--model", "-m", autocompletion=complete_model, help="Registry name, org/repo id or local diffusers-format directory.")]
Resolution = Annotated[Optional[str], typer.Option("--res", "-r", help="Size: 1024, WxH (e.g. 1536x1024), 1K, 2K, 4K, 720p, 1080p.")]
Seed = Annotated[Optional[int], typer.Option("--seed", "-s", help="Seed of the first image or clip (random if not given); --num N uses seed..seed+N-1 (past 4294967295 they go on from 0).")]
Num = Annotated[Optional[int], typer.Option("--num", "-n", min=1, help="Images (clips) per prompt.")]
Out = Annotated[Optional[str], typer.Option("--out", "-o", help="Output file (.png/.jpg/.webp) or directory.")]
Prompts = Annotated[Optional[Path], typer.Option("--prompts", help="File with one prompt a line, or JSONL with per-line overrides.")]
Lora = Annotated[Optional[List[str]], typer.Option("--lora", help="LoRA file PATH[:SCALE]; repeatable.")]
Device = Annotated[str, typer.Option("--device", callback=check_device_name, help="auto, cuda, cuda:N, mps or cpu.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto, bf16, fp16 or fp32.")]
VaeDtype = Annotated[str, typer.Option("--vae-dtype", help="The VAE's dtype: auto (fp32 as the model's recipe has it, where memory allows the same placement; else --dtype's), bf16, fp16 or fp32.")]
BestOf = Annotated[Optional[int], typer.Option("--best-of", min=2, max=256, help="Draw N candidates for each image and keep the one --reward scores best (inference-time scaling, as SANA-1.5 does it); the record keeps the chosen seed and every score.")]
Reward = Annotated[Optional[str], typer.Option("--reward", help="What --best-of ranks by: shapes, clip, pickscore, hpsv2, imagereward or path/file.py:function, NAME:WEIGHT,... summed (default: shapes for nano, else pickscore).")]
Fp8 = Annotated[bool, typer.Option("--fp8", help="Run the transformer's block linears as fp8 GEMMs (NVIDIA GPUs of compute capability 8.9+: Ada, Hopper): faster, and the output moves slightly from bf16's.")]
FromFile = Annotated[Optional[Path], typer.Option("--from", help="Replay the settings stored in an image's or clip's metadata; explicit flags win.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")]
Gpus = Annotated[int, typer.Option("--gpus", min=1, help="Split the outputs across N processes, one a GPU (torchrun); with --device cpu, N CPU processes.")]
SkipExisting = Annotated[bool, typer.Option("--skip-existing", help="Make only the outputs not yet on disk (continue a --prompts or --num run that stopped).")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON line per file written (path, seed, prompt, size, timings) instead of its path.")]
Steps = Annotated[Optional[int], typer.Option("--steps", min=1, help="Sampling steps (model default if not given).")]
Transformer = Annotated[Optional[str], typer.Option("--transformer", help="Transformer weights to use instead of the model's own: a .safetensors or NVlabs .pth file, or a folder.")]
Memory = Annotated[str, typer.Option("--memory", help="Placement: auto (from the GPU's free memory), high (everything on the GPU), balanced (text encoder leaves after encoding), low (each component on the GPU only while it runs), minimal (low + transformer blocks streamed from CPU memory).")]
MaxVram = Annotated[Optional[str], typer.Option("--max-vram", help="Cap on the GPU memory sana uses, e.g. 8G (binary units: 8G = 8 GiB); the plan fits under it.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the memory plan (component, dtype, where, predicted peak) and exit without loading weights.")]
Cfg = Annotated[Optional[float], typer.Option("--cfg", "--guidance", callback=check_guidance, help="Classifier-free guidance scale (<= 1 turns CFG off).")]
Negative = Annotated[Optional[str], typer.Option("--negative", help="Negative prompt.")]
Sampler = Annotated[Optional[str], typer.Option("--sampler", help="flow-dpm (DPM-Solver++ 2M) or flow-euler.")]
Shift = Annotated[Optional[float], typer.Option("--shift", callback=check_shift, help="Flow shift (model default if not given).")]
Server = Annotated[Optional[str], typer.Option("--server", help="Generate on a running `sana serve` at this URL (e.g. http://127.0.0.1:8000); the files are written here as without it. --lora then names one of the server's LoRAs.")]
ApiKey = Annotated[Optional[str], typer.Option("--api-key", envvar="SANA_API_KEY", help="The server's API key (with --server).")]

# Clips (sana video)
ClipModel = Annotated[Optional[str], typer.Option("--model", "-m", autocompletion=complete_model, help="Registry name, org/repo id or local diffusers-format directory (default: the best SANA-Video model downloaded, video-2b-480p first, else the built-in nano-video).")]
ClipSeed = Annotated[Optional[int], typer.Option("--seed", "-s", help="Seed of the first clip (random if not given); --num N uses seed..seed+N-1 (past 4294967295 they go on from 0).")]
ClipNum = Annotated[Optional[int], typer.Option("--num", "-n", min=1, help="Clips per prompt (default 1), made in one batch.")]
ClipSteps = Annotated[Optional[int], typer.Option("--steps", min=1, help="Sampling steps (default: the model's; 50 for SANA-Video, 20 for nano-video).")]
ClipCfg = Annotated[Optional[float], typer.Option("--cfg", "--guidance", callback=check_guidance, help="Classifier-free guidance scale (default: the model's; 6 for SANA-Video, 2 for nano-video; <= 1 turns CFG off).")]
Image = Annotated[Optional[Path], typer.Option("--image", "-i", help="First frame: image to video (PNG, JPEG, WebP, ...).")]
Frames = Annotated[Optional[int], typer.Option("--frames", "-f", help="Frames per clip (model default, 81 for SANA-Video; snapped to what the VAE makes: 4k+1 or 8k+1).")]
Fps = Annotated[Optional[float], typer.Option("--fps", help="Frames per second of the written clip (default: the model's, 16 for SANA-Video, 8 for nano-video; a GIF plays at most 50).")]
MotionScore = Annotated[Optional[str], typer.Option("--motion-score", help="Appends \" motion score: N.\" to the prompt, as SANA-Video was trained (default: the model's, 30 for SANA-Video, none for nano-video); none appends nothing.")]
ClipOut = Annotated[Optional[str], typer.Option("--out", "-o", help="Output file (.mp4/.gif/.webp) or directory (end with /).")]
ClipFormat = Annotated[Optional[str], typer.Option("--format", help="mp4, gif, webp, or png (a folder of PNG frames) when -o is a directory.")]
Crf = Annotated[Optional[int], typer.Option("--crf", help="MP4 quality: 0 (lossless) to 51 (default 18, visually lossless).")]

# Camera paths (sana world)
Camera = Annotated[Optional[str], typer.Option("--camera", "-c", help="Camera path file, its kind told by its content (the kinds below; docs/camera-paths.md).")]
Actions = Annotated[Optional[str], typer.Option("--actions", help="Camera moves as keys held for frames, e.g. \"w-80,jw-40,w-40\" (the table below).")]
Intrinsics = Annotated[Optional[str], typer.Option("--intrinsics", help="fx,fy,cx,cy in pixels of --image, or a .npy / text file (K 3x3, (F, 3, 3), (4,) or (F, 4)).")]
Fov = Annotated[Optional[float], typer.Option("--fov", help="Vertical field of view of --image in degrees (square pixels, centred principal point).")]
PoseScale = Annotated[Optional[float], typer.Option("--pose-scale", help="Multiplies the path's translations (default 1; SANA-WM was trained on metric poses).")]
Speed = Annotated[Optional[float], typer.Option("--speed", help="--actions: units moved a frame (default 0.05).")]
TurnRate = Annotated[Optional[float], typer.Option("--turn-rate", help="--actions: degrees turned a frame (default 1.2).")]
CameraFps = Annotated[Optional[float], typer.Option("--camera-fps", help="Frame rate of .npy poses (default 16, SANA-WM's).")]
Preview = Annotated[Optional[Path], typer.Option("--preview", help="Draw the resolved camera path (top and side views, frustums coloured by time) to this PNG and exit without loading the model.")]
Refine = Annotated[Optional[bool], typer.Option("--refine/--no-refine", help="Run SANA-WM's stage 2 (the LTX-2 refiner: Gemma-3 12B and a 48-layer DiT, GPU only in practice) on each clip's latents before the decode; the clip loses its first frame. Uses the model folder's refiner/ or --refiner. --no-refine replays a refined clip's stage 1 alone.")]
Refiner = Annotated[Optional[Path], typer.Option("--refiner", help="A diffusers-format SanaWMLTX2Refiner folder (implies --refine).")]
WorldImage = Annotated[Optional[Path], typer.Option("--image", "-i", help="First frame (PNG, JPEG, WebP, ...): the view from the camera path's first pose; resized to cover the generated size and centre-cropped.")]
WorldFrames = Annotated[Optional[int], typer.Option("--frames", "-f", help="Frames to generate (model default 161, at most what the camera path gives at 16 fps; snapped to 8k+1).")]
ClipResolution = Annotated[Optional[str], typer.Option("--res", "-r", help="Size WxH, sides multiples of 32 (e.g. 832x480), or 480p (832x480) / 720p (1280x704); the model's trained aspect bin is generated and resized to it.")]
WorldSize = Annotated[Optional[str], typer.Option("--res", "-r", help="Generated size WxH (default 1280x704, the only size SANA-WM was trained at; multiples of 32).")]
