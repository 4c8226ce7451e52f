"""Options shared by the generating commands, defined once."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer


Model = Annotated[Optional[str], typer.Option("--model", "-m", help="Registry name, org/repo id or local diffusers-format directory.")]
Resolution = Annotated[Optional[str], typer.Option("--res", "-r", help="Size: 1024, WxH (e.g. 1536x1024), 1K, 2K, 4K, 720p, 1080p.")]
Seed = Annotated[Optional[int], typer.Option("--seed", "-s", help="Seed of the first image (random if not given); --num N uses seed..seed+N-1.")]
Num = Annotated[Optional[int], typer.Option("--num", "-n", min=1, help="Images per prompt.")]
Out = Annotated[Optional[str], typer.Option("--out", "-o", help="Output file (.png/.jpg/.webp) or directory.")]
Prompts = Annotated[Optional[Path], typer.Option("--prompts", help="File with one prompt a line, or JSONL with per-line overrides.")]
Lora = Annotated[Optional[List[str]], typer.Option("--lora", help="LoRA file PATH[:SCALE]; repeatable.")]
Device = Annotated[str, typer.Option("--device", help="auto, cuda, cuda:N, mps or cpu.")]
Dtype = Annotated[str, typer.Option("--dtype", help="auto, bf16, fp16 or fp32.")]
Fp8 = Annotated[bool, typer.Option("--fp8", help="Run the transformer's block linears as fp8 GEMMs (NVIDIA GPUs of compute capability 8.9+: Ada, Hopper): faster, and the image moves slightly from bf16's.")]
FromFile = Annotated[Optional[Path], typer.Option("--from", help="Replay the settings stored in an image's metadata; explicit flags win.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")]
Steps = Annotated[Optional[int], typer.Option("--steps", min=1, help="Sampling steps (model default if not given).")]
Transformer = Annotated[Optional[str], typer.Option("--transformer", help="Transformer weights to use instead of the model's own: a .safetensors or NVlabs .pth file, or a folder.")]
Memory = Annotated[str, typer.Option("--memory", help="Placement: auto (from the GPU's free memory), high (everything on the GPU), balanced (text encoder leaves after encoding), low (each component on the GPU only while it runs), minimal (low + transformer blocks streamed from CPU memory).")]
MaxVram = Annotated[Optional[str], typer.Option("--max-vram", help="Cap on the GPU memory sana uses, e.g. 8G (binary units: 8G = 8 GiB); the plan fits under it.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Print the memory plan (component, dtype, where, predicted peak) and exit without loading weights.")]
