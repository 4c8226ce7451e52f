"""`sana serve`: load models once (images, clips, world-model clips), then answer OpenAI-shaped HTTP requests
(`sana.serving`); the loading is `serve_models`."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from typing import Annotated, Optional

import typer

from sana.errors import SanaError, UsageError

from . import console
from . import options as opt

Models = Annotated[Optional[list[str]], typer.Option(
    "--model", "-m", help="Model to serve (registry name, org/repo id, directory or nano): an image, SANA-Video or "
                          "SANA-WM model; repeat for several.")]
Refiners = Annotated[Optional[list[str]], typer.Option(
    "--refiner", help="SANA-WM's stage 2 for a served world model: MODEL (its folder's refiner/) or MODEL=DIR (a "
                      "diffusers SanaWMLTX2Refiner folder); requests ask for it with \"refine\": true.")]
Origins = Annotated[Optional[list[str]], typer.Option(
    "--allow-origin", help="A web page origin (scheme://host[:port]) whose scripts may call this server besides its "
                           "own page, e.g. the public address of a reverse proxy that rewrites Host; repeatable.")]
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
    allow_origin: Origins = None,
    lora: Loras = None,
    refiner: Refiners = None,
    gpus: Annotated[int, typer.Option("--gpus", min=1, max=64, help="Worker processes behind the one queue, one a "
                                                                  "GPU (with --device cpu: that many CPU processes); "
                                                                  "image models.")] = 1,
    ray: Annotated[bool, typer.Option("--ray", help="Run the models as Ray Serve replicas (one GPU each, or CPU) "
                                                    "behind this server; image models. Needs Ray Serve (the ray extra).")] = False,
    ray_address: Annotated[Optional[str], typer.Option(
        "--ray-address", envvar="RAY_ADDRESS", show_envvar=True,
        help="The Ray cluster to join (e.g. auto, or HEAD:6379); without it --ray starts a Ray of its own.")] = None,
    replicas: Annotated[int, typer.Option("--replicas", min=1, max=1024, help="--ray: replicas to start.")] = 1,
    max_replicas: Annotated[Optional[int], typer.Option(
        "--max-replicas", min=1, max=1024, help="--ray: let Ray autoscale from --replicas up to this many.")] = None,
    replica_cpus: Annotated[int, typer.Option("--replica-cpus", min=1, max=512,
                                              help="--ray: CPU cores each CPU replica takes (and its torch "
                                                   "threads).")] = 1,
    warmup: Annotated[Optional[bool], typer.Option(
        "--warmup/--no-warmup", help="Before /healthz says ok, generate each image model's default size once with "
                                     "one image and once with --max-batch (captures the CUDA graphs, so the first "
                                     "request is as fast as the next). Default: on a GPU only; the CPU has no such "
                                     "one-time costs and a generation there takes seconds.")] = None,
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
                         "pip install fastapi uvicorn where sana runs; after pipx install: pipx inject sana-cli "
                         "fastapi uvicorn") from None
    from sana.memory import check_mode, parse_memory_size
    from sana.serving.scheduler import Scheduler
    from sana.serving.warmup import should_warm_up

    # 2. Every argument checked before torch is imported. Security: loopback only, unless an API key guards the
    #    server or the user insists.
    if not host.strip():
        raise UsageError("--host is empty", "give an address to bind, e.g. 127.0.0.1, or 0.0.0.0 for every one")
    if not model:
        raise UsageError("no model to serve", "pass --model NAME (e.g. --model nano); repeat it for several")
    if not _is_loopback(host) and not api_key and not insecure:
        raise UsageError(f"refusing to serve on {host} without an API key",
                         "pass --api-key KEY (or set SANA_API_KEY), or --insecure to serve it open")
    if len(set(model)) != len(model):
        raise UsageError("a model is given twice", "give each --model once")
    origins = _origins(allow_origin or [])
    if not ray and (replicas != 1 or max_replicas is not None or replica_cpus != 1):
        raise UsageError("--replicas, --max-replicas and --replica-cpus are for Ray Serve", "add --ray")
    if ray and gpus > 1:
        raise UsageError("--ray and --gpus both spread the models", "use --ray --replicas N, or --gpus N")
    if max_replicas is not None and max_replicas < replicas:
        raise UsageError(f"--max-replicas {max_replicas} is below --replicas {replicas}",
                         "--replicas is where autoscaling starts and its floor")
    memory_mode = check_mode(memory or "auto")
    cap = parse_memory_size(max_vram) if max_vram else None
    refiners = _refiners(refiner or [], model)
    if refiners and (ray or gpus > 1):
        raise UsageError("--refiner is for world models, which this server loads itself", "drop --ray / --gpus")
    from .serve_models import attach_loras, load_model, read_allow_list, resolve_any

    for name in model:  # resolved, not loaded: an unknown name or a missing download fails at once
        resolve_any(name)
    allowed = read_allow_list(lora or [])
    listeners = _listen(host, port)  # bound now: a port in use fails before the models load, not after

    # 3. Each model loaded once, placed as its memory plan says (as `sana gen` does); the LoRAs checked against
    #    the models they fit.
    from .generation import quiet_libraries

    quiet_libraries()
    _configure_logging()
    # With --ray, Ray's @serve.batch gathers the batches in each replica: the queue here hands on one job at a time.
    scheduler = Scheduler(max_batch=1 if ray else max_batch, window=0 if ray else batch_window_ms / 1000,
                          max_queue=max_queue)
    from sana.serving.guard import LOOPBACK_NAMES

    hosts = LOOPBACK_NAMES | {_url_host(host.strip("[]").lower())} if _is_loopback(host) else None
    state = ServerState(models={}, scheduler=scheduler, api_key=api_key, max_batch=max_batch, origins=origins,
                        hosts=hosts)
    if ray:
        state.runner = _start_ray(state, model, lora or [], allowed, address=ray_address, replicas=replicas,
                                  max_replicas=max_replicas or replicas, cpus=replica_cpus,
                                  device=device, dtype=dtype, memory=memory_mode, max_vram=cap, max_batch=max_batch,
                                  window=batch_window_ms / 1000, port=port, warmup=warmup)
    elif gpus > 1:  # worker processes load the models; this one only plans and admits
        state.runner = _start_workers(state, model, lora or [], allowed, gpus, device=device, dtype=dtype,
                                      memory=memory_mode, max_vram=cap, max_batch=max_batch, warmup=warmup)
    else:
        for name in model:
            state.models[name] = load_model(name, device=device, dtype=dtype, memory=memory_mode, max_vram=cap,
                                            max_batch=max_batch, refiner=refiners.get(name))
        attach_loras(state.models, allowed)
        state.warmup = should_warm_up(warmup, [m.device for m in state.models.values()])
    models = state.models

    # 4. Serve on the sockets bound in step 2 until interrupted.
    guard = "API key required" if api_key else "no API key"
    warming = "; warming up first" if state.warmup or getattr(state.runner, "warming", False) else ""
    console.info(f"serving {', '.join(models)} on {_listening(host, port)} ({guard}; max batch {max_batch}, "
                 f"queue {max_queue}{warming})")
    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            state.begin_shutdown()  # open requests answer 503 now, before uvicorn waits for them
            await super().shutdown(sockets)

    server = Server(uvicorn.Config(create_app(state), host=host, port=port, log_level="warning",
                                   access_log=False, timeout_graceful_shutdown=5))
    try:
        server.run(sockets=listeners)
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped (as `uvicorn.run` takes it)
        return
    if not server.started:
        raise SanaError("the server did not start", "its log above says why")


def _listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to host:port as asyncio binds a server's (one for each address the host resolves to, IPv6
    ones v6-only), for uvicorn to listen on."""
    try:
        addresses = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: {exc.strerror}", "give an address or a name this machine resolves") \
            from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is in use", "choose another --port") from None
        raise UsageError(f"cannot listen on {host} port {port}: {exc.strerror or exc}",
                         "choose another --host or --port") from None
    return sockets


def _refiners(texts: list[str], models: list[str]) -> dict[str, str]:
    """--refiner MODEL[=DIR] -> {model: DIR, or "" for the model folder's refiner/}; each names a served model."""
    refiners: dict[str, str] = {}
    for text in texts:
        name, _, folder = text.partition("=")
        if name not in models:
            raise UsageError(f"--refiner {text}: {name!r} is not a served --model", "give --refiner MODEL[=DIR]")
        if name in refiners:
            raise UsageError(f"--refiner names {name} twice", "give each model one refiner")
        refiners[name] = folder
    return refiners


def _start_workers(state, names: list[str], lora_texts: list[str], allowed: dict, count: int, *, device: str,
                   dtype: str, memory: str, max_vram: int | None, max_batch: int, warmup: bool | None):
    """`--gpus N`: the models described here (planned, not loaded), N worker processes loading them (and warming
    them up meanwhile), started."""
    from sana.serving.processes import ProcessPool
    from sana.serving.warmup import should_warm_up

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
                       devices=devices, warmup=should_warm_up(warmup, devices))
    pool.start()
    _narrow_loras(state, allowed, pool.lora_names())
    return pool


def _start_ray(state, names: list[str], lora_texts: list[str], allowed: dict, *, address: str | None,
               replicas: int, max_replicas: int, cpus: int, device: str, dtype: str, memory: str,
               max_vram: int | None, max_batch: int, window: float, port: int, warmup: bool | None):
    """`--ray`: the replicas deployed on the Ray cluster (a Ray of this process's own without an address; each
    replica warms up before it counts as started), then the models described here (planned against a replica's
    device, not loaded)."""
    import socket

    from sana.serving.warmup import should_warm_up

    # 1. Ray Serve: an optional extra; only image models, on GPUs or CPUs.
    try:
        import ray

        from sana.serving import replicas as ray_replicas
    except ImportError as exc:
        raise UsageError(f"`sana serve --ray` needs Ray Serve ({exc.name} is missing)",
                         "pip install \"ray[serve]\" where sana runs; after pipx install: pipx inject sana-cli "
                         "\"ray[serve]\"") from None
    from .serve_models import IMAGE_FAMILIES, load_model, load_models, resolve_any

    for name in names:
        if resolve_any(name)[2] not in IMAGE_FAMILIES:
            raise UsageError(f"{name} is a clip model: Ray replicas (--ray) serve image models for now",
                             "serve it without --ray")
    if (device or "auto") not in ("auto", "cuda", "cpu"):
        raise UsageError(f"--ray takes --device auto, cuda or cpu, not {device}", "each GPU replica gets one GPU")

    # 2. Join the cluster (or start a Ray here), then the replicas: one GPU each, or CPU ones.
    own = not address and not os.environ.get("RAY_ADDRESS")
    try:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise SanaError(f"could not join the Ray cluster at {address or os.environ.get('RAY_ADDRESS')}: "
                        f"{_first_line(exc)}",
                        "check --ray-address / RAY_ADDRESS (e.g. auto, or HEAD_IP:6379)") from None
    gpu = device == "cuda" or (device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1)
    app = f"sana-{socket.gethostname()}-{port}"  # a restart on the same host and port replaces its replicas
    threads = None if gpu else cpus
    spec = {"names": list(names), "loras": list(lora_texts), "dtype": dtype, "memory": memory, "max_vram": max_vram,
            "max_batch": max_batch, "threads": threads}
    scaling = f"{replicas} to {max_replicas}" if max_replicas > replicas else str(replicas)
    console.info(f"starting {scaling} Ray Serve replica(s) ({'one GPU' if gpu else f'{cpus} CPU core(s)'} each) "
                 f"as application {app}")
    try:
        handle = ray_replicas.deploy(load_models, spec, app=app, gpu=gpu, cpus=cpus, max_batch=max_batch,
                                     window=window, replicas=replicas, max_replicas=max_replicas,
                                     warmup=should_warm_up(warmup, ["cuda" if gpu else "cpu"]))
    except Exception as exc:  # a replica could not load (its traceback is in Ray's log above)
        ray_replicas.remove(app, whole=own)
        raise SanaError(f"the Ray Serve replicas did not start: {_first_line(exc)}",
                        "every node needs sana-cli, the model's files and the --lora files") from None

    # 3. The models described here from a replica's device, for the admission caps; the LoRAs the replicas took.
    described = handle.describe.remote().result()
    for name in names:
        state.models[name] = load_model(name, device=device, dtype=dtype, memory=memory, max_vram=max_vram,
                                        max_batch=max_batch, load=False, device_info=described["device_info"])
    _narrow_loras(state, allowed, described["loras"])
    return ray_replicas.ReplicaPool(handle, state.scheduler, state.metrics, state.progress,
                                    in_flight=min(256, ray_replicas.IN_FLIGHT_BATCHES * max_batch * max_replicas),
                                    on_stop=lambda: ray_replicas.remove(app, whole=own),
                                    warmup_seconds=described.get("warmup_s"))


def _narrow_loras(state, allowed: dict, taken_by_model: dict[str, list[str]]) -> None:
    """Each model admits the allow-listed LoRAs its workers took (the ones that fit it)."""
    from sana.serving.loras import AllowList

    for name, taken in taken_by_model.items():
        if taken:
            state.models[name].loras = AllowList({lora: allowed[lora] for lora in taken})


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


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _listening(host: str, port: int) -> str:
    """Where to reach the server: its URL, or for a wildcard bind (0.0.0.0, ::) URLs that work."""
    try:
        wildcard = ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False
    if not wildcard:
        return f"http://{_url_host(host)}:{port}"
    here = "[::1]" if ":" in host else "127.0.0.1"  # an IPv6 wildcard socket is bound v6-only
    return (f"http://{here}:{port} and http://{socket.gethostname()}:{port} (listening on all "
            f"{'IPv6 ' if ':' in host else ''}interfaces)")


def _origins(texts: list[str]) -> frozenset[str]:
    """--allow-origin values, checked: scheme://host[:port], nothing after."""
    from urllib.parse import urlsplit

    origins = set()
    for text in texts:
        parsed = urlsplit(text.strip())
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path.strip("/") or parsed.query:
            raise UsageError(f"--allow-origin {text} is not an origin", "give scheme://host[:port], e.g. "
                             "https://sana.example.com")
        origins.add(f"{parsed.scheme}://{parsed.netloc}".lower())
    return frozenset(origins)


def _configure_logging() -> None:
    """One line an event (errors included) on stderr, under the `sana.serve` logger."""
    logger = logging.getLogger("sana.serve")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if console.settings.verbose else logging.INFO)
    logger.propagate = False
