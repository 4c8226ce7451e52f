"""`sana serve` under load: throughput and p50 / p99 latency with 1, 4 and 16 concurrent clients, against
sequential ImagePipeline and diffusers SanaPipeline calls in the same run, and a warm server's first image against
its steady state.

Random weights at the real configs (the registry model's DiT, Gemma-2-2B, DC-AE f32c32) are saved once as a
diffusers folder (`bench_memory.build_model`); `--model nano` uses the embedded nano model instead. In order:
1. the sequential baselines in this process: our ImagePipeline and diffusers' SanaPipeline on the folder, one
   untimed call each, then `--sequential` timed calls (one image each, new seeds); then both are freed;
2. `sana serve` on the folder as a subprocess (its Triton cache is the one step 1 filled, so its first image
   measures the server, not the compiler); once /healthz answers 200 (after the server's warm-up: "up in" counts
   it, and /healthz's `warmup_s` is reported apart), one request alone (the warm server's first image), then
   `--steady` requests one after another (the steady state);
3. for each `--clients` count: one untimed round of that many concurrent requests (a new batch size captures its
   CUDA graphs), then `--requests` requests (at least one a client) from that many client threads; images a second
   over the level's wall time, latency from each request's send to its whole answer, and the mean batch from the
   server's /metrics.
Every request and call asks for the same settings: `--steps`, CFG 4.5, no PAG, flow-dpm, shift 3.0, `--px` square.
The server encodes each image (`--output-format`, png by default, as OpenAI's API does); random weights draw
noise, PNG's worst case.

    python scripts/bench_serve.py                                 # on a CUDA GPU: sana-1.6b, 1024 px, 20 steps
    python scripts/bench_serve.py --markdown BENCHMARKS.md
    python scripts/bench_serve.py --device cpu --model nano --px 256 --steps 2 --clients 1,2 --requests 2 \\
        --sequential 2 --steady 1                                 # the CPU dry path: checks the script's paths
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

PROMPT = "a photo of a cat sleeping on a sunny windowsill, highly detailed"
GUIDANCE, SAMPLER, SHIFT = 4.5, "flow-dpm", 3.0
STARTUP_SECONDS = 1800.0  # the server loading 1.6B + Gemma-2-2B from a cold disk


@dataclass
class Row:
    run: str
    clients: int
    latencies: list[float] = field(default_factory=list)  # seconds, one a request (or call)
    wall: float = 0.0  # seconds for all of them
    mean_batch: float | None = None  # images a forward (the server's /metrics)

    @property
    def images_per_second(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))


# -- the sequential baselines -------------------------------------------------------------------------------------

def sequential(folder: Path, *, device: str, px: int, steps: int, calls: int) -> list[Row]:
    """Our ImagePipeline and diffusers' SanaPipeline, one image a call, after one untimed call each."""
    import torch
    from diffusers import SanaPipeline

    from sana.device import pick_device
    from sana.pipelines.image import ImagePipeline, ImageRequest

    pick_device(device)  # on the CPU, the threads `sana serve` takes too
    dtype = torch.bfloat16 if device == "cuda" else torch.float32

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(name: str, call) -> Row:
        call(10_000)  # compiles kernels, captures graphs, fills the allocator's cache
        row = Row(name, 1)
        start = time.perf_counter()
        for seed in range(calls):
            sync()
            began = time.perf_counter()
            call(seed)
            sync()
            row.latencies.append(time.perf_counter() - began)
        row.wall = time.perf_counter() - start
        return row

    def ours_call(pipe):
        return lambda seed: pipe.generate(ImageRequest(prompt=PROMPT, seeds=[seed], width=px, height=px, steps=steps,
                                                       guidance=GUIDANCE, sampler=SAMPLER, flow_shift=SHIFT))

    def diffusers_call(pipe):
        return lambda seed: pipe(PROMPT, num_inference_steps=steps, guidance_scale=GUIDANCE, width=px, height=px,
                                 generator=torch.Generator("cpu").manual_seed(seed))

    rows = []
    # One pipeline on the device at a time: each is freed before the next loads.
    for name, load, call in (
            ("ImagePipeline, sequential", lambda: ImagePipeline.from_pretrained(folder, dtype=dtype, device=device),
             ours_call),
            ("SanaPipeline (diffusers), sequential",
             lambda: SanaPipeline.from_pretrained(folder, torch_dtype=dtype).to(device), diffusers_call)):
        pipe = load()
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        rows.append(timed(name, call(pipe)))
        del pipe
        _free(device)
    return rows


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# -- the server ---------------------------------------------------------------------------------------------------

class Server:
    """`sana serve` in a subprocess, and requests to it."""

    def __init__(self, model: str, *, device: str, max_batch: int, window_ms: float, log: Path, px: int, steps: int,
                 output_format: str):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{port}"
        self.px, self.steps, self.output_format = px, steps, output_format
        self.warmup: float | None = None  # the server's warm-up, seconds (from /healthz)
        self.log = log
        env = dict(os.environ, NO_COLOR="1", HF_HUB_OFFLINE="1", PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
        env.pop("SANA_API_KEY", None)
        command = [sys.executable, "-m", "sana_cli", "serve", "--model", model, "--device", device, "--port",
                   str(port), "--max-batch", str(max_batch), "--batch-window-ms", str(window_ms), "--max-queue", "256"]
        with log.open("w") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait(self) -> float:
        """Seconds until /healthz answers 200 (503 while the server warms up); its warm-up's seconds (None without
        one) in `self.warmup`."""
        start = time.perf_counter()
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"sana serve exited with {self.process.returncode}:\n{self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.base + "/healthz", timeout=5) as answer:
                    if answer.status == 200:
                        self.warmup = json.loads(answer.read()).get("warmup_s")
                        return time.perf_counter() - start
            except OSError:  # not listening yet, or 503 (an HTTPError) while warming up
                pass
            if time.perf_counter() - start > STARTUP_SECONDS:
                raise RuntimeError("sana serve did not start:\n" + self.log.read_text()[-2000:])
            time.sleep(0.5)

    def generate(self, seed: int) -> float:
        """Seconds from sending one request to reading its whole answer."""
        body = json.dumps({"prompt": PROMPT, "size": f"{self.px}x{self.px}", "seed": seed,
                           "num_inference_steps": self.steps, "guidance_scale": GUIDANCE, "pag_scale": 0.0,
                           "sampler": SAMPLER, "flow_shift": SHIFT, "output_format": self.output_format}).encode()
        request = urllib.request.Request(self.base + "/v1/images/generations", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=3600) as answer:
                data = json.loads(answer.read())["data"]
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"the server answered {error.code}: {error.read()[:500]!r}") from None
        seconds = time.perf_counter() - start
        if len(data) != 1 or not data[0].get("b64_json"):
            raise RuntimeError(f"the server answered without an image: {str(data)[:200]}")
        return seconds

    def batches(self) -> tuple[float, int]:
        """(images, forwards) so far, from /metrics."""
        with urllib.request.urlopen(self.base + "/metrics", timeout=30) as answer:
            text = answer.read().decode()
        total = re.search(r"^sana_batch_size_sum (\S+)$", text, re.M)
        count = re.search(r"^sana_batch_size_count (\d+)$", text, re.M)
        return (float(total.group(1)) if total else 0.0), (int(count.group(1)) if count else 0)

    def concurrent(self, clients: int, requests: int, first_seed: int) -> Row:
        """`requests` requests from `clients` threads, each sending its next one when its last is answered."""
        seeds = iter(range(first_seed, first_seed + requests))
        lock = threading.Lock()
        row, errors = Row("sana serve", clients), []

        def client():
            while True:
                with lock:
                    seed = next(seeds, None)
                if seed is None:
                    return
                try:
                    seconds = self.generate(seed)
                except Exception as exc:  # reported after the level: every request must be answered
                    errors.append(exc)
                    return
                with lock:
                    row.latencies.append(seconds)

        before = self.batches()
        threads = [threading.Thread(target=client) for _ in range(clients)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        row.wall = time.perf_counter() - start
        if errors:
            raise RuntimeError(f"{len(errors)} request(s) failed at {clients} clients: {errors[0]}")
        after = self.batches()
        forwards = after[1] - before[1]
        row.mean_batch = (after[0] - before[0]) / forwards if forwards else None
        return row

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- the run ------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sana-1.6b",
                        help="registry model whose DiT config is built with random weights, or nano")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--px", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--clients", default="1,4,16", help="concurrent client counts, comma-separated")
    parser.add_argument("--requests", type=int, default=32, help="timed requests a level (at least one a client)")
    parser.add_argument("--sequential", type=int, default=8, help="timed calls of each sequential pipeline")
    parser.add_argument("--steady", type=int, default=5, help="requests one at a time after the first image")
    parser.add_argument("--max-batch", type=int, default=4, help="the server's --max-batch")
    parser.add_argument("--batch-window-ms", type=float, default=20.0, help="the server's --batch-window-ms")
    parser.add_argument("--output-format", default="png", choices=("png", "jpeg", "webp"))
    parser.add_argument("--markdown", type=Path, help="append the section to this file")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",") if c.strip()]

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.exit(1, "bench_serve needs a CUDA GPU (or --device cpu --model nano for the dry path)\n")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # 1. The model folder: random weights at the real configs, or the embedded nano model.
        if args.model == "nano":
            from sana.hub import resolve_model

            folder, served = resolve_model("nano").path, "nano"
        else:
            from bench_memory import build_model

            start = time.perf_counter()
            folder = tmp / "model"
            build_model(folder, tiny=False, device=args.device, model=args.model)
            served = str(folder)
            _say(f"built the random model folder in {time.perf_counter() - start:.1f} s")

        # 2. The sequential baselines, then the server on a freed device.
        rows = sequential(folder, device=args.device, px=args.px, steps=args.steps, calls=args.sequential)
        for row in rows:
            _say(f"{row.run}: {statistics.median(row.latencies):.3f} s an image")
        server = Server(served, device=args.device, max_batch=args.max_batch, window_ms=args.batch_window_ms,
                        log=tmp / "server.log", px=args.px, steps=args.steps, output_format=args.output_format)
        try:
            startup = server.wait()
            warmup = f" (warm-up {server.warmup:.1f} s)" if server.warmup is not None else " (no warm-up)"
            _say(f"server up in {startup:.1f} s{warmup}")
            first = server.generate(20_000)
            steady = [server.generate(20_001 + i) for i in range(args.steady)]
            _say(f"first image {first:.3f} s, steady state {statistics.median(steady):.3f} s")
            seed = 30_000
            for count in clients:
                server.concurrent(count, count, seed)  # warm-up round
                seed += count
                row = server.concurrent(count, max(args.requests, count), seed)
                seed += max(args.requests, count)
                rows.append(row)
                _say(f"{count} clients: {row.images_per_second:.2f} images/s, "
                     f"p50 {percentile(row.latencies, 50):.3f} s")
        finally:
            server.stop()

    text = report(args, rows, first=first, steady=steady, startup=startup, warmup=server.warmup)
    print(text)
    if args.markdown:
        with args.markdown.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


def report(args, rows: list[Row], *, first: float, steady: list[float], startup: float,
           warmup: float | None = None) -> str:
    """The Markdown section: one row a run, then the issue's two targets."""
    import torch

    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    warmed = f"of which warm-up {warmup:.1f} s" if warmup is not None else "no warm-up"
    ours = rows[0].images_per_second
    diffusers = rows[1].images_per_second
    lines = [f"## {datetime.date.today()}: `sana serve` under concurrent clients ({name}, torch {torch.__version__})",
             "",
             f"`python scripts/bench_serve.py --model {args.model} --device {args.device} --px {args.px} --steps "
             f"{args.steps} --clients {args.clients} --requests {args.requests} --max-batch {args.max_batch} "
             f"--batch-window-ms {args.batch_window_ms:g} --output-format {args.output_format}`: "
             f"{'random weights at the real configs' if args.model != 'nano' else 'the embedded nano model'}, "
             f"{args.px} px, {args.steps} steps, CFG {GUIDANCE}, one image a request; the server a subprocess on the "
             f"same device, started after the sequential runs (up in {startup:.1f} s, {warmed}); latency from send "
             f"to the whole answer ({args.output_format}, base64).", "",
             "| run | clients | requests | images/s | x ImagePipeline | x SanaPipeline | p50 s | p99 s | mean batch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ips = row.images_per_second
        batch = f"{row.mean_batch:.2f}" if row.mean_batch is not None else "1"
        lines.append(f"| {row.run} | {row.clients} | {len(row.latencies)} | {ips:.3f} | {ips / ours:.2f}x | "
                     f"{ips / diffusers:.2f}x | {percentile(row.latencies, 50):.3f} | "
                     f"{percentile(row.latencies, 99):.3f} | {batch} |")
    steady_s = statistics.median(steady) if steady else first
    lines += ["", f"Warm server: first image {first:.3f} s, steady state {steady_s:.3f} s (median of {len(steady)} "
                  f"single requests): {first / steady_s:.2f}x (target <= 1.2x)."]
    if rows[2:]:
        top = max(rows[2:], key=lambda row: row.clients)
        lines.append(f"{top.clients} clients: {top.images_per_second / ours:.2f}x sequential ImagePipeline, "
                     f"{top.images_per_second / diffusers:.2f}x sequential SanaPipeline (target >= 1.5x).")
    return "\n".join(lines) + "\n"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
