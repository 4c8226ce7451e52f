"""The HTTP routes (FastAPI). Routes:

- `POST /v1/images/generations`: OpenAI's Images API (plus SGLang's and our extensions), answered `ImagesResponse`;
- `GET /v1/images/{id}/content`: an image generated with `response_format: "url"`;
- `/v1/videos` (`video_routes`): clip jobs, SGLang's subset of OpenAI's Videos API;
- `GET /` and `/static/*` (the web page), `GET /v1/progress/{id}` (server-sent events) (`page`);
- `GET /v1/models`, `GET /v1/models/{id}`, `GET /healthz` (503 `{"status": "warming"}` while the models warm up,
  then 200 `"ok"`; with worker processes, `"degraded"` while some are lost and 503 `"unavailable"` with none
  left), `GET /metrics` (Prometheus text).

Every request first passes the guard (`guard.Guard`: Host and Origin, API key, body size, counters). Errors are
OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with a 4xx status for bad requests.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .admission import MAX_SIDE_FACTOR, ServedModel, build_job
from .forms import json_object
from .guard import Guard, error_response
from .metrics import Metrics, cuda_memory
from .processes import WorkerLost
from .progress import ProgressHub
from .scheduler import ClientGone, QueueFull, Scheduler
from .schemas import ApiError, ImageData, ImageGenerationRequest, ImagesResponse, ModelCard, ModelList
from .store import ImageStore
from .videos import VideoStore
from .worker import Worker

log = logging.getLogger("sana.serve")
MAX_BODY_BYTES = 1 * 2**20
MAX_UPLOAD_BYTES = 24 * 2**20  # a clip job's body may carry its first frame
DISCONNECT_POLL = 0.25  # seconds between checks that a waiting client is still there
QUEUE_FULL_RETRY_S = 5  # Retry-After of a 429: about a batch's time
RESTARTING_RETRY_S = 30  # Retry-After while worker processes load their models again


@dataclass
class ServerState:
    models: dict[str, ServedModel]
    scheduler: Scheduler
    metrics: Metrics = field(default_factory=Metrics)
    store: ImageStore = field(default_factory=ImageStore)
    videos: VideoStore = field(default_factory=VideoStore)
    progress: ProgressHub = field(default_factory=ProgressHub)
    api_key: str | None = None
    max_batch: int = 4
    max_body: int = MAX_BODY_BYTES
    max_upload: int = MAX_UPLOAD_BYTES
    runner: Any = None  # what runs the batches: None for one worker thread here, or a processes.ProcessPool
    warmup: bool = False  # the worker thread here warms the image models up before /healthz says "ok"
    hosts: frozenset[str] | None = None  # the Host names answered, any port (a loopback server's names); None: any
    origins: frozenset[str] = frozenset()  # browser origins allowed besides the server's own (--allow-origin)
    closing: threading.Event = field(default_factory=threading.Event)  # set once the server begins to stop

    def begin_shutdown(self) -> None:
        """The server is stopping (uvicorn calls this before it waits for the open requests): waiting and running
        requests answer 503 at once, the running batch stops at its next step, progress streams end. Without
        this, uvicorn's graceful-shutdown timeout cancels the handlers mid-request (a traceback, a plain 500)."""
        self.closing.set()
        self.scheduler.close()
        self.progress.close()


def create_app(state: ServerState) -> FastAPI:
    """The app for `state`; its worker thread starts and stops with the app (lifespan)."""
    from contextlib import asynccontextmanager

    from .page import add_page_routes
    from .video_routes import add_video_routes

    worker = state.runner or Worker(state.models, state.scheduler, state.metrics, state.progress,
                                    max_batch=state.max_batch, warmup=state.warmup)
    state.scheduler.on_drop = state.scheduler.on_drop or state.metrics.drop

    @asynccontextmanager
    async def lifespan(_app):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)
        state.videos.close()

    app = FastAPI(title="sana", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.sana = state

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(request.method, request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error_response(request.method, request.url.path, validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(request.method, request.url.path, ApiError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error")
        return error_response(request.method, request.url.path, ApiError(500, f"{type(exc).__name__}: {exc}"))

    @app.post("/v1/images/generations", response_model=ImagesResponse, response_model_exclude_none=True)
    async def generations(request: Request):
        # 1. Admit: a JSON body, the caps and the model's limits (4xx), a worker to run it (503 with none), then a
        #    place in the queue (429 when full).
        try:
            body = ImageGenerationRequest.model_validate(
                json_object(request.headers.get("content-type", ""), await request.body()))
        except ValidationError as exc:
            raise validation_error(exc) from None
        job = build_job(state.models, body, max_batch=state.max_batch)
        check_workers(state.runner)
        try:
            future = state.scheduler.submit(job)
        except QueueFull as exc:
            raise queue_full(state, exc) from None
        state.progress.publish(job.progress_id, {"status": "queued", "ahead": len(state.scheduler) - 1})
        # 2. Wait for the worker. A client that goes away is answered 499 at once (its job is dropped if it still
        #    waits; a running batch stops once all of its clients have gone); so is every request once the server
        #    begins to stop (503).
        waiting = asyncio.wrap_future(future)
        waiting.add_done_callback(_consume)  # nobody may await it after a 499 or a 503
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=DISCONNECT_POLL)
            if waiting.done():
                break
            if state.closing.is_set():
                raise shutting_down()
            if await request.is_disconnected():
                state.scheduler.withdraw(job)
                ran = not (future.done() and isinstance(future.exception(), ClientGone))
                raise ApiError(499, "the client disconnected while its request ran" if ran else
                               "the client disconnected before its request ran", code="client_closed")
        try:
            encoded = await waiting
        except ClientGone as exc:
            raise ApiError(499, str(exc), code="client_closed") from None
        except ApiError:
            raise
        except WorkerLost as exc:
            if state.closing.is_set():
                raise shutting_down() from None
            raise ApiError(503, f"generation failed: {exc}; retry", code="worker_lost") from None
        except Exception as exc:
            if state.closing.is_set():
                raise shutting_down() from None
            raise ApiError(500, f"generation failed: {exc}", code="generation_failed") from None
        # 3. Answer in OpenAI's shape: base64 images, or URLs to the in-memory store.
        fmt = job.context["output_format"]
        if job.context["response_format"] == "url":
            base = str(request.base_url).rstrip("/")
            data = [ImageData(url=f"{base}/v1/images/{state.store.put(b, fmt)}/content") for b in encoded]
        else:
            data = [ImageData(b64_json=base64.b64encode(b).decode("ascii")) for b in encoded]
        return ImagesResponse(created=int(time.time()), data=data, output_format=fmt,
                              size=f"{job.request.width}x{job.request.height}")

    @app.get("/v1/images/{image_id}/content")
    async def content(image_id: str):
        found = state.store.get(image_id)
        if found is None:
            raise ApiError(404, "no such image (ids are kept for a bounded number of recent images)",
                           param="image_id", code="image_not_found")
        data, media_type = found
        return Response(content=data, media_type=media_type)

    @app.get("/v1/models", response_model=ModelList)
    async def models():
        return ModelList(data=[ModelCard(id=m.name, created=m.created) for m in state.models.values()])

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard)
    async def model_card(model_id: str):
        served = state.models.get(model_id)
        if served is None:
            raise ApiError(404, f"the model '{model_id[:80]}' is not served here (served: {', '.join(state.models)})",
                           param="model", code="model_not_found")
        return ModelCard(id=served.name, created=served.created)

    @app.get("/healthz")
    async def healthz():
        kinds = {m.name: m.kind for m in state.models.values()}
        workers = worker_list(state.runner)
        lost = [w["device"] for w in workers if w.get("state", "ok") != "ok"]
        status = "warming" if worker.warming else "unavailable" if lost and len(lost) == len(workers) else \
            "degraded" if lost else "ok"
        warmup = worker.warmup_seconds
        body = {"status": status, "models": list(state.models), "kinds": kinds,
                "queue_depth": len(state.scheduler), "max_batch": state.max_batch,
                "max_side": {m.name: m.resolution * MAX_SIDE_FACTOR for m in state.models.values()},
                "api_key": state.api_key is not None, "workers": workers, "lost_workers": lost,
                "warmup_s": None if warmup is None else round(warmup, 3)}
        return JSONResponse(body, status_code=503) if status in ("warming", "unavailable") else body

    @app.get("/metrics")
    async def metrics():
        text = state.metrics.render(queue_depth=len(state.scheduler), device_memory=cuda_memory())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    add_video_routes(app, state)
    add_page_routes(app, state)
    return Guard(app, state)


def shutting_down() -> ApiError:
    return ApiError(503, "the server is shutting down", code="shutting_down")


def queue_full(state: ServerState, exc: QueueFull) -> ApiError:
    if state.closing.is_set():
        return shutting_down()
    return ApiError(429, f"{exc}; retry later", code="queue_full", headers={"Retry-After": str(QUEUE_FULL_RETRY_S)})


def worker_list(runner) -> list[dict]:
    """What /healthz says of each worker: worker processes, Ray replicas, or this process's thread."""
    if runner is None:
        return [{"device": "this process"}]
    if hasattr(runner, "workers"):
        return runner.workers()
    return [{"device": d, "batches": n} for d, n in zip(runner.devices, runner.batches)]


def check_workers(runner) -> None:
    """A 503 at once when no worker process is left to run a request (some may be loading their models again)."""
    if runner is None or getattr(runner, "alive", 1) > 0:
        return
    restarting = getattr(runner, "restarting", 0)
    if restarting:
        raise ApiError(503, f"no worker process is running ({restarting} restarting: they load their models "
                       "again); retry later", code="no_workers", headers={"Retry-After": str(RESTARTING_RETRY_S)})
    raise ApiError(503, "no worker process is running (they stopped; see the server's log)", code="no_workers")


def _consume(waiting: asyncio.Future) -> None:
    """Retrieve a finished future's exception, so that asyncio does not log it as never retrieved."""
    if not waiting.cancelled():
        waiting.exception()


def validation_error(exc) -> ApiError:
    """A validation failure (FastAPI's RequestValidationError or pydantic's ValidationError: a malformed body, a
    missing or out-of-range field) as one 400."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return ApiError(400, "the request body is not valid JSON", code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "missing":
        if param is None:  # the whole body
            return ApiError(400, "the request body is empty: send a JSON object (with at least 'prompt')",
                            code="missing_required_parameter")
        return ApiError(400, f"missing required parameter: '{param}'", param=param, code="missing_required_parameter")
    message = first.get("msg", "invalid request").removeprefix("Value error, ")
    if not loc and first.get("type") == "model_attributes_type":
        message = "the request body must be a JSON object"
    return ApiError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")
