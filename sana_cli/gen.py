"""`sana gen`: text to image with SANA / SANA-1.5 (2K / 4K included), optionally with PAG."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


from . import options as opt


def gen(
    prompt: Annotated[Optional[str], typer.Argument(help="What to draw.")] = None,
    model: opt.Model = None,
    transformer: opt.Transformer = None,
    res: opt.Resolution = None,
    steps: opt.Steps = None,
    cfg: Annotated[Optional[float], typer.Option("--cfg", help="Classifier-free guidance scale (<= 1 turns CFG off).")] = None,
    pag: Annotated[Optional[float], typer.Option("--pag", help="Perturbed-attention guidance scale (0 = off).")] = None,
    pag_layer: Annotated[Optional[int], typer.Option("--pag-layer", help="Block whose self-attention PAG perturbs.")] = None,
    seed: opt.Seed = None,
    negative: Annotated[Optional[str], typer.Option("--negative", help="Negative prompt.")] = None,
    sampler: Annotated[Optional[str], typer.Option("--sampler", help="flow-dpm (DPM-Solver++ 2M) or flow-euler.")] = None,
    shift: Annotated[Optional[float], typer.Option("--shift", help="Flow shift (model default if not given).")] = None,
    out: opt.Out = None,
    num: opt.Num = None,
    prompts: opt.Prompts = None,
    lora: opt.Lora = None,
    device: opt.Device = "auto",
    dtype: opt.Dtype = "auto",
    fp8: opt.Fp8 = False,
    memory: opt.Memory = "auto",
    max_vram: opt.MaxVram = None,
    dry_run: opt.DryRun = False,
    from_file: opt.FromFile = None,
    force: opt.Force = False,
) -> None:
    """Generate images from a prompt."""
    from .generation import run

    flags = dict(locals())
    flags["from"] = flags.pop("from_file")
    run(flags, command="gen")
