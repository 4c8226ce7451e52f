"""The first image of a fresh `sana gen` process: with an empty Triton cache, then with the cache it left.

Random weights at the real configs (the registry model's DiT, Gemma-2-2B, DC-AE f32c32) are saved once as a
diffusers folder. Each run is a new `python -m sana_cli gen --prompts` process with TRITON_CACHE_DIR pointing at one
folder: the first run starts with it empty (every Triton kernel compiles), the later ones find it filled. Each
process makes two images of the same prompt (seeds 0 and 1): the second one, in a process already warm, is the
steady state. Reported per run: the seconds from the process's start until its first image file exists (the
parent watches for it), the whole process's wall time, the load, the rest before the first image (interpreter
start, imports, planning), the first image's phases, and the compile/warm-up time: the first image's
encode + denoise + decode minus the second's. The kernels issue's targets are on that warm-up: <= 20 s with an
empty Triton cache, <= 3 s with a warm one. Beside them, a bare `python -c "import torch"` timed in the same run
(median of three processes): the first-image targets are on the fresh process's time to its first image, and on
that time less the bare import.

    python scripts/bench_first_image.py                          # on a CUDA GPU, sana-1.6b at 1024 px
    python scripts/bench_first_image.py --model sana-1.6b-4k --px 4096 --markdown BENCHMARKS.md
    python scripts/bench_first_image.py --tiny                   # tiny configs on the CPU: checks the script's paths
    python scripts/bench_first_image.py --mapped-runs 2 --profile startup.txt   # the read compared; where time goes
    python scripts/bench_first_image.py --runs 1 --trace timeline.txt --folder WORK/first   # start-up by thread
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

PROMPT = "a photo of a cat sleeping on a sunny windowsill, highly detailed"
STEPS = ("encode", "denoise", "decode")


def run_gen(folder: Path, out_dir: Path, px: int, cache: Path, device: str, extra_env: dict | None = None,
            profile: Path | None = None, trace: Path | None = None) -> tuple[float, float, dict, dict]:
    """One fresh `sana gen` process making two images: the seconds until its first image file exists, its whole
    wall time, and the timings recorded in each image. With `profile`, the process runs under cProfile (its
    statistics written there) and `-X importtime` (written beside it); with `trace`, its start-up timeline
    (`sana.trace`, relative to the moment it was started) is written there."""
    from sana.outputs import read_metadata

    out_dir.mkdir()
    first, second = out_dir / "first.png", out_dir / "second.png"
    prompts = out_dir / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": PROMPT, "seed": seed, "out": str(path)}) + "\n"
                               for seed, path in ((0, first), (1, second))))
    events = out_dir / "trace.jsonl"
    env = dict(os.environ, **(extra_env or {}), **({"SANA_TRACE": str(events)} if trace else {}),
               TRITON_CACHE_DIR=str(cache), PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    runner = ["-X", "importtime", "-m", "cProfile", "-o", str(profile)] if profile else []
    command = [sys.executable, *runner, "-m", "sana_cli", "gen", "--prompts", str(prompts), "--model", str(folder),
               "--res", str(px), "--device", device]
    stderr = profile.with_suffix(".imports.txt").open("w") if profile else subprocess.PIPE
    origin, start = time.time(), time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    to_first = None
    while process.poll() is None:  # the first image counts once its file exists (writes are atomic renames)
        if to_first is None and first.exists():
            to_first = time.perf_counter() - start
        time.sleep(0.005)
    wall = time.perf_counter() - start
    error = "" if profile else process.stderr.read()
    if profile:
        stderr.close()
    if process.returncode != 0:
        raise RuntimeError(f"sana gen exited with {process.returncode}: {error.strip()[-500:]}")
    if trace:
        from sana.trace import read, timeline

        trace.write_text(f"first image file after {to_first:.3f} s, process ended after {wall:.3f} s\n"
                         + timeline(read(events, origin)) + "\n", encoding="utf-8")
    return to_first if to_first is not None else wall, wall, dict(read_metadata(first).timings), \
        dict(read_metadata(second).timings)


def profile_summary(profile: Path, top: int = 30) -> str:
    """The profiled process's heaviest functions (cumulative) and its top-level imports over 50 ms."""
    import io
    import pstats

    text = io.StringIO()
    pstats.Stats(str(profile), stream=text).sort_stats("cumulative").print_stats(top)
    imports = []
    for line in profile.with_suffix(".imports.txt").read_text().splitlines():
        fields = line[len("import time:"):].split("|") if line.startswith("import time:") else []
        if len(fields) == 3 and fields[1].strip().isdigit() and not fields[2].startswith("  "):
            seconds = int(fields[1]) / 1e6  # a top-level import: its name follows a single space
            if seconds > 0.05:
                imports.append((seconds, fields[2].strip()))
    listing = "\n".join(f"{seconds:7.3f} s  {name}" for seconds, name in sorted(imports, reverse=True))
    return text.getvalue() + "\ntop-level imports over 50 ms (cumulative):\n" + listing + "\n"


def bare_import_torch(runs: int = 3) -> float:
    """Median wall seconds of a fresh `python -c "import torch"`, the floor under any fresh process here."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sana-1.6b", help="registry model whose DiT config is built")
    parser.add_argument("--px", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3, help="processes in all: the first with an empty cache")
    parser.add_argument("--mapped-runs", type=int, default=0,
                        help="more warm-cache processes reading the weights through the memory map "
                             "(SANA_STAGED_READ=0), to compare with the staged reads")
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (checks the script's paths)")
    parser.add_argument("--markdown", type=Path, help="append the section to this file")
    parser.add_argument("--profile", type=Path,
                        help="one more warm-cache process under cProfile and -X importtime; its summary goes here")
    parser.add_argument("--trace", type=Path,
                        help="one more warm-cache process with SANA_TRACE set; its start-up timeline goes here")
    parser.add_argument("--folder", type=Path,
                        help="keep the random model folder and the Triton cache here, and reuse them if present "
                             "(then no run starts with an empty cache)")
    args = parser.parse_args()

    import torch

    from bench_memory import build_model

    device = "cpu" if args.tiny else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.exit(1, "bench_first_image needs a CUDA GPU (or --tiny)\n")
    px = 64 if args.tiny else args.px
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        kept = args.folder
        model = (kept or tmp) / "model"
        if not (model / "model_index.json").is_file():
            start = time.perf_counter()
            build_model(model, tiny=args.tiny, device=device, model=args.model)
            print(f"built the random model folder in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        cache = (kept or tmp) / "triton-cache"
        warm_cache = cache.is_dir() and any(cache.iterdir())
        cache.mkdir(parents=True, exist_ok=True)
        bare = bare_import_torch()
        print(f"bare import torch: {bare:.2f} s", file=sys.stderr)
        for run in range(args.runs + args.mapped_runs):
            label = "empty Triton cache" if run == 0 and not warm_cache else "warm Triton cache"
            mapped = run >= args.runs
            if mapped:
                label += ", memory-mapped read"
            to_first, wall, first, second = run_gen(model, tmp / f"run{run}", px, cache, device,
                                                    {"SANA_STAGED_READ": "0"} if mapped else None)
            rows.append((label, to_first, wall, first, second))
            print(f"{label}: first image after {to_first:.2f} s, {wall:.2f} s for two images", file=sys.stderr)
        if args.profile:
            stats = tmp / "profile.prof"
            run_gen(model, tmp / "profiled", px, cache, device, profile=stats)
            args.profile.write_text(profile_summary(stats), encoding="utf-8")
            print(f"profile of a warm-cache process: {args.profile}", file=sys.stderr)
        if args.trace:
            run_gen(model, tmp / "traced", px, cache, device, trace=args.trace)
            print(f"start-up timeline of a warm-cache process: {args.trace}", file=sys.stderr)

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    lines = [f"## {datetime.date.today()}: first image of a fresh process ({name}, torch {torch.__version__})", "",
             f"`python scripts/bench_first_image.py --model {args.model} --px {px}"
             f"{' --tiny' if args.tiny else ''}`: one `sana gen` process a row, the same TRITON_CACHE_DIR for all,"
             " empty before the first; random weights"
             f"{' at tiny configs' if args.tiny else ' at the real configs'}; `sana gen` defaults otherwise."
             " Each process makes two images; the second is the steady state the first is measured against."
             " The first image counts from the process's start until its file exists; the whole process includes"
             " the second image and the exit."
             f" A bare `python -c \"import torch\"` took {bare:.2f} s (median of three, same run).",
             "", "| run | s to the first image | less bare import torch s | whole process s | load s | rest s |"
             " first image: encode / denoise / decode s | second image: encode / denoise / decode s |"
             " compile/warm-up s |", "|---|---|---|---|---|---|---|---|---|"]
    for label, to_first, wall, first, second in rows:
        rest = to_first - first.get("load", 0.0) - sum(first.get(p, 0.0) for p in STEPS) - first.get("save", 0.0)
        warmup = sum(first.get(p, 0.0) for p in STEPS) - sum(second.get(p, 0.0) for p in STEPS)
        load = first.get("load", 0.0)
        lines.append(f"| {label} | {to_first:.2f} | {to_first - bare:.2f} | {wall:.2f} | {load:.2f} | {rest:.2f} | "
                     + " / ".join(f"{first.get(p, 0.0):.2f}" for p in STEPS) + " | "
                     + " / ".join(f"{second.get(p, 0.0):.2f}" for p in STEPS) + f" | {warmup:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        with args.markdown.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
