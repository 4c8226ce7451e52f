"""The HTTP routes (FastAPI), and the guard every request passes first: body size, API key, metrics, one log line
for each error. Routes:

- `POST /v1/images/generations`: OpenAI's Images API (plus SGLang's and our extensions), answered `ImagesResponse`;
- `GET /v1/images/{id}/content`: an image generated with `response_format: "url"`;
- `GET /v1/models`, `GET /healthz`, `GET /metrics` (Prometheus text).

Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with a 4xx status for bad requests.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import logging
import time
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .admission import ServedModel, build_job
from .metrics import Metrics, cuda_memory
from .scheduler import ClientGone, QueueFull, Scheduler
from .schemas import ApiError, ImageData, ImageGenerationRequest, ImagesResponse, ModelCard, ModelList
from .store import ImageStore
from .worker import Worker

log = logging.getLogger("sana.serve")
MAX_BODY_BYTES = 1 * 2**20
DRAIN_BYTES = 64 * 2**20  # an oversized body is read (and dropped) up to this, so the client gets the 413
DISCONNECT_POLL = 0.25  # seconds between checks that a waiting client is still there
ROUTES = ("/v1/images/generations", "/v1/models", "/healthz", "/metrics")
OPEN_ROUTES = ("/healthz",)  # answered without the API key (liveness probes)


@dataclass
class ServerState:
    models: dict[str, ServedModel]
    scheduler: Scheduler
    metrics: Metrics = field(default_factory=Metrics)
    store: ImageStore = field(default_factory=ImageStore)
    api_key: str | None = None
    max_batch: int = 4
    max_body: int = MAX_BODY_BYTES


def create_app(state: ServerState) -> FastAPI:
    """The app for `state`; its worker thread starts and stops with the app (lifespan)."""
    from contextlib import asynccontextmanager

    worker = Worker(state.models, state.scheduler, state.metrics)
    state.scheduler.on_drop = state.scheduler.on_drop or state.metrics.drop

    @asynccontextmanager
    async def lifespan(_app):
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

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
    async def generations(body: ImageGenerationRequest, request: Request):
        # 1. Admit: the caps and the model's limits (4xx), then a place in the queue (429 when full).
        job = build_job(state.models, body, max_batch=state.max_batch)
        try:
            future = state.scheduler.submit(job)
        except QueueFull as exc:
            raise ApiError(429, f"{exc}; retry later", code="queue_full") from None
        # 2. Wait for the worker, dropping the job if the client goes away before it runs.
        waiting = asyncio.wrap_future(future)
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=DISCONNECT_POLL)
            if not waiting.done() and await request.is_disconnected():
                state.scheduler.withdraw(job)
                break
        try:
            encoded = await waiting
        except ClientGone as exc:
            raise ApiError(499, str(exc), code="client_closed") from None
        except ApiError:
            raise
        except Exception as exc:
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

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "models": list(state.models), "queue_depth": len(state.scheduler)}

    @app.get("/metrics")
    async def metrics():
        text = state.metrics.render(queue_depth=len(state.scheduler), device_memory=cuda_memory())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return Guard(app, state)


def error_response(method: str, path: str, exc: ApiError) -> JSONResponse:
    """The error as JSON in OpenAI's shape; logged as one line."""
    log.warning("%s %s -> %d %s", method, path[:200], exc.status, exc.message)
    return JSONResponse(exc.body(), status_code=exc.status)


def validation_error(exc: RequestValidationError) -> ApiError:
    """FastAPI's validation failure (a malformed body, a missing or out-of-range field) as one 400."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return ApiError(400, "the request body is not valid JSON", code="invalid_json")
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "missing":
        return ApiError(400, f"missing required parameter: '{param}'", param=param, code="missing_required_parameter")
    message = first.get("msg", "invalid request")
    if not loc and first.get("type") == "model_attributes_type":
        message = "the request body must be a JSON object"
    return ApiError(400, f"{param}: {message}" if param else message, param=param, code="invalid_value")


class Guard:
    """ASGI middleware around the app: the API key (a bearer token, compared in constant time), the body size
    (read into memory only up to `max_body`), the request counters."""

    def __init__(self, app, state: ServerState):
        self.app = app
        self.state = state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        route = _route(path)
        status = {}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            # 1. The API key, before anything else is read.
            if self.state.api_key and path not in OPEN_ROUTES and not self._authorized(scope):
                await _drain(receive, DRAIN_BYTES)
                return await _reject(scope, counting_send, ApiError(
                    401, "a valid API key is needed: send 'Authorization: Bearer KEY'", code="invalid_api_key"))
            # 2. The body, up to the cap.
            body, too_large = await _read_body(scope, receive, self.state.max_body)
            if too_large:
                return await _reject(scope, counting_send, ApiError(
                    413, f"the request body is larger than {self.state.max_body} bytes", code="request_too_large"))
            await self.app(scope, _replay(body, receive), counting_send)
        finally:
            self.state.metrics.request(route, status.get("code", 499))

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                          self.state.api_key.encode())
        return False


def _route(path: str) -> str:
    if path in ROUTES:
        return path
    if path.startswith("/v1/images/") and path.endswith("/content"):
        return "/v1/images/{id}/content"
    return "other"


async def _read_body(scope, receive, limit: int) -> tuple[bytes, bool]:
    """(body, too_large): the whole body when it is at most `limit` bytes; else the rest is drained."""
    declared = dict(scope.get("headers", ())).get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        await _drain(receive, DRAIN_BYTES)
        return b"", True
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            await _drain(receive, DRAIN_BYTES - size)
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), False


async def _drain(receive, budget: int) -> None:
    """Read and drop the body (up to `budget` bytes) so that the client, still sending, reads the answer."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _replay(body: bytes, receive):
    """A `receive` that gives the app the body read already, then the client's later messages (a disconnect)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _reject(scope, send, exc: ApiError) -> None:
    method = scope.get("method", "")
    response = error_response(method, scope.get("path", ""), exc)
    if exc.status == 413:
        response.headers["connection"] = "close"
    await response({"type": "http", **scope}, _no_receive, send)


async def _no_receive():
    return {"type": "http.disconnect"}

