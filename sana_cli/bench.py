"""`sana bench`: our DiT against diffusers (eager and torch.compile) on this GPU, plus the per-kernel table."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.table import Table

from . import console

KERNEL_BENCHES = ("linear_attention", "modulation", "mixffn", "rms_norm", "upsample", "fp8", "text_attention",
                  "linear_residual")


def bench(
    model: Annotated[Optional[List[str]], typer.Option("--model", "-m", help="Registry model(s); default sana-1.6b and sprint-1.6b.")] = None,
    px: Annotated[Optional[List[int]], typer.Option("--px", help="Image side(s) in px; default 1024, 2048, 4096.")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch for SANA (2 = one CFG step); Sprint runs batch 1.")] = 2,
    compiled: Annotated[bool, typer.Option("--compile/--no-compile", help="Also time diffusers + torch.compile.")] = True,
    kernels: Annotated[bool, typer.Option("--kernels/--no-kernels", help="Also print the per-kernel table.")] = True,
    fp8: Annotated[bool, typer.Option("--fp8/--no-fp8", help="Also time our fp8 block linears (GPUs of compute capability 8.9+).")] = True,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Append the results as a Markdown section to this file.")] = None,
    generate: Annotated[bool, typer.Option("--generate", help="Instead: prompt-to-image time after load (1.6B, Gemma-2-2B, DC-AE); with --video / --world a whole clip against diffusers' pipeline.")] = False,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Sampling steps for --generate (default: images 20; clips the model's 50 / 60).")] = None,
    video: Annotated[bool, typer.Option("--video", help="Instead: the SANA-Video 2B forward (480x832, 81 frames, batch 2).")] = False,
    world: Annotated[bool, typer.Option("--world", help="Instead: the SANA-WM 2.6B forward (704x1280, 161 frames, batch 2, camera on).")] = False,
    frames: Annotated[Optional[int], typer.Option("--frames", min=1, help="Frames for --video / --world (81 / 161 by default).")] = None,
    compile_timeout: Annotated[float, typer.Option("--compile-timeout", min=1, help="Seconds to wait for diffusers + torch.compile in --video / --world.")] = 420,
) -> None:
    """Measure the DiT forward (random weights, real configs, bf16) against diffusers in one run."""
    from sana.benchmarks.image import STEP, bench_dit, bf16_peak_tflops

    if (video or world) and generate:
        _bench_clips(video, world, frames, steps, markdown)
        return
    if video or world:
        _bench_clip_dits(video, world, frames, compiled, compile_timeout, markdown)
        return
    if generate:
        _bench_generate(px or [1024, 4096], steps or 20, markdown, fp8)
        return
    models = model or ["sana-1.6b", "sprint-1.6b"]
    sizes = px or [1024, 2048, 4096]
    rows = []
    for name in models:
        sprint = "sprint" in name
        rows += bench_dit(name, sizes, batch=1 if sprint else batch, compiled=compiled, fp8=fp8,
                          on_row=lambda r: console.info(f"measured {r.model} {r.px} px"))
    import torch

    card = torch.cuda.get_device_name()
    peak = bf16_peak_tflops()
    impls = list(rows[0].ms)
    with_fp8 = rows[0].fp8_error is not None
    fp8_columns = ["fp8 vs diffusers", "fp8 rel. err vs bf16"] if with_fp8 else []
    table = Table(title=f"DiT forward, ms (median) on {card}, bf16 (fp8: block linears only)", header_style="bold")
    for column in ("model", "px", "batch", *impls, "best bf16 TFLOP/s", "% peak", "vs diffusers", "step vs diffusers",
                   *fp8_columns, "first call s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    lines = []
    for r in rows:
        best = r.best_bf16()
        tflops = r.tflop / best * 1e3
        first = ", ".join(f"{k}: {v:.1f}" for k, v in r.first_call_s.items())
        fp8_cells = [f"{r.ms['diffusers'] / r.ms['ours, fp8+graph']:.2f}x", f"{r.fp8_error:.3f}"] if with_fp8 else []
        cells = [r.model, str(r.px), str(r.batch), *[f"{r.ms[k]:.2f}" for k in impls], f"{tflops:.0f}",
                 f"{100 * tflops / peak:.0f}%" if peak else "-", f"{r.ms['diffusers'] / best:.2f}x",
                 f"{r.ms['diffusers'] / r.ms[STEP]:.2f}x", *fp8_cells, first]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.table(table)
    kernel_output = ""
    if kernels:
        for op in KERNEL_BENCHES:
            done = subprocess.run([sys.executable, "-m", f"sana.kernels.{op}.bench"], capture_output=True, text=True)
            kernel_output += done.stdout + (done.stderr if done.returncode else "")
        console.out.print(kernel_output, highlight=False)
    if markdown:
        header = ["model", "px", "batch", *[f"{k} ms" for k in impls], "best bf16 TFLOP/s", "% peak",
                  "vs diffusers", "step vs diffusers", *fp8_columns, "first call s"]
        argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else []
        command = " ".join(["sana bench", *argv])
        text = (f"\n## {datetime.date.today()}: {card}, torch {torch.__version__}\n\n`{command}`\n\n"
                f"| {' | '.join(header)} |\n|{'---|' * len(header)}\n" + "\n".join(lines) + "\n")
        if kernel_output:
            text += f"\nPer-kernel (`python -m sana.kernels.<op>.bench`):\n\n```\n{kernel_output.strip()}\n```\n"
        with open(markdown, "a", encoding="utf-8") as f:
            f.write(text)


def _bench_generate(sizes: list[int], steps: int, markdown: Path | None, fp8: bool) -> None:
    import torch

    from sana.benchmarks.image import bench_generate

    rows = bench_generate(sizes, steps=steps, fp8=fp8, on_row=lambda r: console.info(f"measured {r.px} px"))
    card = torch.cuda.get_device_name()
    with_fp8 = rows[0].fp8_psnr is not None
    fp8_columns = ["ours, fp8", "fp8 speed-up", "fp8 PSNR vs bf16 dB"] if with_fp8 else []
    table = Table(title=f"prompt to image after load, s (median of 3), 1.6B, {card}, bf16", header_style="bold")
    for column in ("px", "steps", "diffusers SanaPipeline", "ours", "speed-up", *fp8_columns,
                   "ours: encode / denoise / decode"):
        table.add_column(column, justify="right")
    lines = []
    for r in rows:
        phases = " / ".join(f"{r.phases.get(k, 0):.3f}" for k in ("encode", "denoise", "decode"))
        fp8_cells = [f"{r.seconds['ours, fp8']:.3f}", f"{r.seconds['diffusers'] / r.seconds['ours, fp8']:.2f}x",
                     f"{r.fp8_psnr:.1f}"] if with_fp8 else []
        cells = [str(r.px), str(r.steps), f"{r.seconds['diffusers']:.3f}", f"{r.seconds['ours']:.3f}",
                 f"{r.seconds['diffusers'] / r.seconds['ours']:.2f}x", *fp8_cells, phases]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.table(table)
    if markdown:
        argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else []
        header = ["px", "steps", "diffusers s", "ours s", "speed-up", *[f"{c} s" if c == "ours, fp8" else c
                                                                       for c in fp8_columns],
                  "ours encode / denoise / decode s"]
        text = (f"\n## {datetime.date.today()}: {card}, torch {torch.__version__}\n\n`{' '.join(['sana bench', *argv])}`\n\n"
                f"| {' | '.join(header)} |\n|{'---|' * len(header)}\n" + "\n".join(lines) + "\n")
        with open(markdown, "a", encoding="utf-8") as f:
            f.write(text)


def _bench_clip_dits(video: bool, world: bool, frames: int | None, compiled: bool, compile_timeout: float,
                     markdown: Path | None) -> None:
    import torch

    from sana.benchmarks.image import bf16_peak_tflops
    from sana.benchmarks.clip_dit import COMPILE_FORMS, bench_video_dit, bench_world_dit, compiled_name

    rows = []
    if video:
        rows.append(bench_video_dit(frames=frames or 81, compiled=compiled, compile_timeout_s=compile_timeout))
        console.info("measured the video DiT")
    if world:
        rows.append(bench_world_dit(frames=frames or 161, compiled=compiled, compile_timeout_s=compile_timeout))
        console.info("measured the world-model DiT")
    card = torch.cuda.get_device_name()
    peak = bf16_peak_tflops()
    impls = ["diffusers", *map(compiled_name, COMPILE_FORMS), "ours, torch ops", "ours, kernels"]
    header = ["model", "size", "frames (latent)", "batch", *[f"{k} ms" for k in impls], "ours / eager",
              "ours / compiled", "TFLOP/s", "% peak", "peak GiB (diffusers / ours)", "rel. err vs diffusers",
              "first call s"]
    table = Table(title=f"clip DiT forward, ms (median) on {card}, bf16, random weights", header_style="bold")
    for column in header:
        table.add_column(column, justify="left" if column == "model" else "right")
    lines = []
    for r in rows:
        best = r.best_ours()
        tflops = r.tflop / best * 1e3
        compiled_ms = r.best_compiled()
        cells = [r.model, f"{r.width}x{r.height}", f"{r.frames} ({r.latent[0]}x{r.latent[1]}x{r.latent[2]})", str(r.batch),
                 *[f"{r.ms[k]:.1f}" if k in r.ms else "-" for k in impls], f"{best / r.ms['diffusers']:.2f}x",
                 f"{best / compiled_ms:.2f}x" if compiled_ms else "-", f"{tflops:.0f}",
                 f"{100 * tflops / peak:.0f}%" if peak else "-",
                 f"{r.peak_gib.get('diffusers', 0):.1f} / {r.peak_gib.get('ours, kernels', 0):.1f}",
                 f"{r.error.get('ours vs diffusers', float('nan')):.2e}",
                 ", ".join(f"{k}: {v:.1f}" for k, v in r.first_call_s.items())]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.table(table)
    notes = [f"{r.model}: {note}" for r in rows for note in r.notes]
    for note in notes:
        console.out.print(note, highlight=False)
    if markdown:
        argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else []
        text = (f"\n## {datetime.date.today()}: {card}, torch {torch.__version__}\n\n`{' '.join(['sana bench', *argv])}`\n\n"
                f"| {' | '.join(header)} |\n|{'---|' * len(header)}\n" + "\n".join(lines) + "\n")
        text += "".join(f"\n- {note}" for note in notes) + ("\n" if notes else "")
        with open(markdown, "a", encoding="utf-8") as f:
            f.write(text)


def _bench_clips(video: bool, world: bool, frames: int | None, steps: int | None, markdown: Path | None) -> None:
    import torch

    from sana.benchmarks.clip_runs import bench_video_clip, bench_world_clip

    rows = []
    if video:
        rows.append(bench_video_clip(steps=steps or 50, frames=frames or 81))
        console.info("measured a video clip")
    if world:
        rows.append(bench_world_clip(steps=steps or 60, frames=frames or 161))
        console.info("measured a world-model clip")
    card = torch.cuda.get_device_name()
    header = ["model", "size", "frames", "steps", "diffusers s", "ours s", "ours / diffusers",
              "ours by phase, s", "peak GiB (diffusers / ours)", "PSNR ours vs diffusers dB"]
    table = Table(title=f"a whole clip after load, s, on {card}, bf16, random weights", header_style="bold")
    for column in header:
        table.add_column(column, justify="left" if column == "model" else "right")
    lines = []
    for r in rows:
        phases = ", ".join(f"{k} {v:.2f}" for k, v in r.phases.items())
        cells = [r.model, f"{r.width}x{r.height}", str(r.frames), str(r.steps), f"{r.seconds['diffusers']:.2f}",
                 f"{r.seconds['ours']:.2f}", f"{r.seconds['ours'] / r.seconds['diffusers']:.2f}x", phases,
                 f"{r.peak_gib['diffusers']:.1f} / {r.peak_gib['ours']:.1f}", f"{r.psnr_db:.1f}"]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    console.table(table)
    if markdown:
        argv = sys.argv[sys.argv.index("bench") + 1:] if "bench" in sys.argv else []
        text = (f"\n## {datetime.date.today()}: {card}, torch {torch.__version__}\n\n`{' '.join(['sana bench', *argv])}`\n\n"
                f"| {' | '.join(header)} |\n|{'---|' * len(header)}\n" + "\n".join(lines) + "\n")
        with open(markdown, "a", encoding="utf-8") as f:
            f.write(text)
