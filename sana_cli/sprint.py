"""`sana sprint`: 1-4 step text to image with SANA-Sprint."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from . import options as opt


def sprint(
    prompt: Annotated[Optional[str], typer.Argument(help="What to draw.")] = None,
    model: opt.Model = None,
    transformer: opt.Transformer = None,
    res: opt.Resolution = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, max=4, help="1 to 4 steps (default 2).")] = None,
    guidance: Annotated[Optional[float], typer.Option("--guidance", help="Guidance fed to the guidance embedding (default 4.5).")] = None,
    max_timesteps: Annotated[Optional[float], typer.Option(
        "--max-timesteps", callback=opt.check_trigflow_time,
        help="TrigFlow time the sampler starts from (default the model's, 1.5708 = pure noise).")] = None,
    intermediate_timesteps: Annotated[Optional[float], typer.Option(
        "--intermediate-timesteps", callback=opt.check_trigflow_time,
        help="The middle timestep of a 2-step run (default the model's, 1.3).")] = None,
    seed: opt.Seed = None,
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
    skip_existing: opt.SkipExisting = False,
    best_of: opt.BestOf = None,
    reward: opt.Reward = None,
    as_json: opt.Json = False,
) -> None:
    """Generate images in 1-4 steps with a SANA-Sprint model."""
    from .gen import run

    flags = dict(locals())
    flags["from"] = flags.pop("from_file")
    flags["cfg"] = flags.pop("guidance")
    run(flags, command="sprint")
