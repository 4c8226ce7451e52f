"""`sana serve`: load image models once, then answer OpenAI-shaped HTTP requests (`sana.serving`)."""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Annotated, Optional

import typer

from sana.errors import UsageError

from . import console
from . import options as opt

Models = Annotated[Optional[list[str]], typer.Option(
    "--model", "-m", help="Model to serve (registry name, org/repo id, directory or nano); repeat for several.")]


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
    device: opt.Device = "auto",
    dtype: opt.Dtype = "auto",
    memory: opt.Memory = "auto",
    max_vram: opt.MaxVram = None,
) -> None:
    """Serve image models over HTTP: OpenAI's Images API (POST /v1/images/generations) and /v1/models."""
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

    # 3. Each model loaded once, placed as its memory plan says (as `sana gen` does).
    from .generation import quiet_libraries

    quiet_libraries()
    models = {}
    for name in model:
        models[name] = load_model(name, device=device, dtype=dtype, memory=memory_mode, max_vram=cap,
                                  max_batch=max_batch)

    # 4. Serve until interrupted.
    _configure_logging()
    scheduler = Scheduler(max_batch=max_batch, window=batch_window_ms / 1000, max_queue=max_queue)
    state = ServerState(models=models, scheduler=scheduler, api_key=api_key, max_batch=max_batch)
    guard = "API key required" if api_key else "no API key"
    console.info(f"serving {', '.join(models)} on http://{_url_host(host)}:{port} ({guard}; max batch {max_batch}, "
                 f"queue {max_queue})")
    uvicorn.run(create_app(state), host=host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=5)


def load_model(name: str, *, device: str, dtype: str, memory: str, max_vram: int | None, max_batch: int):
    """Resolve, plan and load one image model (SANA, SANA-1.5 or SANA-Sprint) as a `ServedModel`."""
    from sana.components import scheduler_config
    from sana.device import DTYPE_NAMES, DTYPES, limit_process_memory, pick_device, probe_device
    from sana.memory import Workload, plan_memory
    from sana.pipelines.image import ImagePipeline
    from sana.pipelines.sizes import binned_size
    from sana.serving.admission import Defaults, ServedModel

    from .gen import model_defaults
    from .generation import component_sizes, resolve_for, weights_variant

    # 1. The model and its defaults (`sana gen`'s or `sana sprint`'s).
    try:
        resolved, spec, family = resolve_for("gen", name, dry_run=False)
    except UsageError as first:
        try:
            resolved, spec, family = resolve_for("sprint", name, dry_run=False)
        except UsageError:
            raise first from None
    sizes = component_sizes(resolved, spec, None)
    native = sizes.native_resolution
    d = model_defaults(spec, scheduler_config(resolved.path), family, native)

    # 2. The memory plan for a full batch at the native size; requests of other sizes are checked against plans of
    #    their own (`plan_for`), made for the device as it was before the load.
    target = pick_device(device or "auto")
    info = probe_device(target)
    copies = 1 if family == "sprint" else 3  # CFG and PAG rows: a client may turn either on

    def plan_for(width: int, height: int, images: int):
        gen_w, gen_h = binned_size(width, height, native)
        work = Workload(width=gen_w, height=gen_h, images=images, rows=images * copies)
        return plan_memory(info, sizes, work, mode=memory, max_vram=max_vram, dtype=dtype or "auto")

    plan = plan_for(native, native, max_batch)
    if max_vram is not None and info.is_accelerator:
        limit_process_memory(target, max_vram)
    torch_dtype = DTYPES[plan.dtype]

    # 3. Load where the plan keeps each component.
    console.info(f"loading {name} ({DTYPE_NAMES[torch_dtype]} on {target})")
    console.info(plan.headline())
    pipe = ImagePipeline.from_pretrained(resolved.path, dtype=torch_dtype, device=target, family=family,
                                         variant=weights_variant(spec, plan), plan=plan)
    defaults = Defaults(steps=d.steps, guidance=d.cfg, pag=d.pag, pag_layer=d.pag_layer, sampler=d.sampler,
                        shift=d.shift, max_timesteps=d.max_timesteps, intermediate_timesteps=d.intermediate_timesteps)
    return ServedModel(name=name, pipeline=pipe, family=family, defaults=defaults, resolution=native,
                       dtype=DTYPE_NAMES[torch_dtype], device=str(target), created=int(time.time()),
                       repo=resolved.repo, revision=resolved.revision, plan_for=plan_for)


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
