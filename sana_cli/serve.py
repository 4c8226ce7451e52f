"""`sana serve`: load models once (images, clips, world-model clips), then answer OpenAI-shaped HTTP requests
(`sana.serving`); the loading is `serve_models`."""

from __future__ import annotations

import ipaddress
import logging
from typing import Annotated, Optional

import typer

from sana.errors import UsageError

from . import console
from . import options as opt

Models = Annotated[Optional[list[str]], typer.Option(
    "--model", "-m", help="Model to serve (registry name, org/repo id, directory or nano): an image, SANA-Video or "
                          "SANA-WM model; repeat for several.")]
Loras = Annotated[Optional[list[str]], typer.Option(
    "--lora", help="A LoRA requests may name: NAME=PATH[:SCALE] (a .safetensors file or the folder holding one); "
                   "repeatable. Clients name LoRAs only from this list.")]


def serve(
    model: Models = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback needs --api-key or "
                                                     "--insecure.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8000,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, max=64, help="Most images one forward generates "
                                                                              "(and the largest n).")] = 4,
    batch_window_ms: Annotated[float, typer.Option("--batch-window-ms", min=0, help="How long a batch waits for "
                                                                                    "requests to join it.")] = 20.0,
    max_queue: Annotated[int, typer.Option("--max-queue", min=1, help="Requests that may wait; more get 429.")] = 64,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="SANA_API_KEY", show_envvar=True,
                                                   help="Bearer token every request must carry.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow a non-loopback --host without an API "
                                                              "key.")] = False,
    lora: Loras = None,
    gpus: Annotated[int, typer.Option("--gpus", min=1, max=64, help="Worker processes behind the one queue, one a "
                                                                  "GPU (with --device cpu: that many CPU processes); "
                                                                  "image models.")] = 1,
    device: opt.Device = "auto",
    dtype: opt.Dtype = "auto",
    memory: opt.Memory = "auto",
    max_vram: opt.MaxVram = None,
) -> None:
    """Serve models over HTTP: OpenAI's Images API (POST /v1/images/generations), clip jobs (/v1/videos), a web
    page at /, and /v1/models."""
    # 1. FastAPI and uvicorn: an optional extra.
    try:
        import uvicorn

        from sana.serving.app import ServerState, create_app
    except ImportError as exc:
        raise UsageError(f"`sana serve` needs FastAPI and uvicorn ({exc.name} is missing)",
                         "pip install fastapi uvicorn, the serve extra of sana-cli") from None
    from sana.memory import check_mode, parse_memory_size
    from sana.serving.scheduler import Scheduler

    # 2. Security: loopback only, unless an API key guards the server or the user insists.
    if not model:
        raise UsageError("no model to serve", "pass --model NAME (e.g. --model nano); repeat it for several")
    if not _is_loopback(host) and not api_key and not insecure:
        raise UsageError(f"refusing to serve on {host} without an API key",
                         "pass --api-key KEY (or set SANA_API_KEY), or --insecure to serve it open")
    if len(set(model)) != len(model):
        raise UsageError("a model is given twice", "give each --model once")
    memory_mode = check_mode(memory or "auto")
    cap = parse_memory_size(max_vram) if max_vram else None
    from .serve_models import attach_loras, load_model, read_allow_list

    allowed = read_allow_list(lora or [])

    # 3. Each model loaded once, placed as its memory plan says (as `sana gen` does); the LoRAs checked against
    #    the models they fit.
    from .generation import quiet_libraries

    quiet_libraries()
    _configure_logging()
    scheduler = Scheduler(max_batch=max_batch, window=batch_window_ms / 1000, max_queue=max_queue)
    state = ServerState(models={}, scheduler=scheduler, api_key=api_key, max_batch=max_batch)
    if gpus > 1:  # worker processes load the models; this one only plans and admits
        state.runner = _start_workers(state, model, lora or [], allowed, gpus, device=device, dtype=dtype,
                                      memory=memory_mode, max_vram=cap, max_batch=max_batch)
    else:
        for name in model:
            state.models[name] = load_model(name, device=device, dtype=dtype, memory=memory_mode, max_vram=cap,
                                            max_batch=max_batch)
        attach_loras(state.models, allowed)
    models = state.models

    # 4. Serve until interrupted.
    guard = "API key required" if api_key else "no API key"
    console.info(f"serving {', '.join(models)} on http://{_url_host(host)}:{port} ({guard}; max batch {max_batch}, "
                 f"queue {max_queue})")
    uvicorn.run(create_app(state), host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)


def _start_workers(state, names: list[str], lora_texts: list[str], allowed: dict, count: int, *, device: str,
                   dtype: str, memory: str, max_vram: int | None, max_batch: int):
    """`--gpus N`: the models described here (planned, not loaded), N worker processes loading them, started."""
    import os

    from sana.serving.loras import AllowList
    from sana.serving.processes import ProcessPool

    from .serve_models import load_model, load_models

    devices = _worker_devices(count, device)
    for name in names:
        state.models[name] = load_model(name, device=devices[0], dtype=dtype, memory=memory, max_vram=max_vram,
                                        max_batch=max_batch, load=False)
    threads = max(1, (os.cpu_count() or 1) // count) if devices[0] == "cpu" else None
    spec = {"names": list(names), "loras": list(lora_texts), "dtype": dtype, "memory": memory, "max_vram": max_vram,
            "max_batch": max_batch, "threads": threads}
    console.info(f"starting {count} worker processes ({', '.join(devices)})")
    pool = ProcessPool(state.models, state.scheduler, state.metrics, state.progress, loader=load_models, spec=spec,
                       devices=devices)
    pool.start()
    for name, taken in pool.lora_names().items():
        if taken:
            state.models[name].loras = AllowList({lora: allowed[lora] for lora in taken})
    return pool


def _worker_devices(count: int, device: str) -> list[str]:
    """One device a worker process: GPUs 0..N-1, or N CPU processes for --device cpu."""
    if device == "cpu":
        return ["cpu"] * count
    if (device or "auto") not in ("auto", "cuda"):
        raise UsageError(f"--gpus {count} takes --device auto, cuda or cpu, not {device}",
                         "the workers use GPUs 0 to N-1")
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < count:
        raise UsageError(f"--gpus {count}: {found} CUDA device(s) here",
                         f"use --gpus {found}" if found > 1 else "use --device cpu for CPU worker processes")
    return [f"cuda:{i}" for i in range(count)]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _configure_logging() -> None:
    """One line an event (errors included) on stderr, under the `sana.serve` logger."""
    logger = logging.getLogger("sana.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if console.settings.verbose else logging.INFO)
    logger.propagate = False
