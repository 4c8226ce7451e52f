"""The guard every request passes first (ASGI middleware around the app): the Host and Origin headers, the API
key, the body size, the request counters; and the one place an error becomes OpenAI's JSON shape and one log line.

Browsers let any web page send a form (or a simple POST) to a local server without asking it first, and DNS
rebinding makes a page's own name point at 127.0.0.1. So a request whose `Origin` is another site's is refused
(the server's own page sends its own origin), and a server bound to loopback answers only to the names of loopback
(`localhost`, `127.0.0.1`, `[::1]`, on any port), so URLs it builds from the Host header are its own.
"""

from __future__ import annotations

import hmac
import logging
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

from .schemas import ApiError

log = logging.getLogger("sana.serve")
DRAIN_BYTES = 64 * 2**20  # an oversized body is read (and dropped) up to this, so the client gets the 413
ROUTES = ("/v1/images/generations", "/v1/models", "/healthz", "/metrics", "/v1/videos", "/")
UPLOAD_ROUTES = ("/v1/videos",)  # bodies that may carry a first frame: `max_upload` rather than `max_body`
OPEN_PATHS = ("/healthz", "/", "/favicon.ico")  # answered without the API key (liveness probes, the page)
OPEN_PREFIXES = ("/static/",)  # the page's own files: they hold no data


def error_response(method: str, path: str, exc: ApiError) -> JSONResponse:
    """The error as JSON in OpenAI's shape; logged as one line."""
    log.warning("%s %s -> %d %s", method, path[:200], exc.status, exc.message)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})


def host_name(host: str) -> str:
    """A Host header's name without its port ("[::1]:8000" -> "[::1]")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.split(":", 1)[0]


class Guard:
    """ASGI middleware around the app: the API key (a bearer token, compared in constant time), the body size
    (read into memory only up to `max_body`), the request counters."""

    def __init__(self, app, state):
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
            # 1. Who is asking: a name this server answers to, from no other site's page; then the API key.
            refusal = self._foreign(scope) or (
                ApiError(401, "a valid API key is needed: send 'Authorization: Bearer KEY'", code="invalid_api_key",
                         headers={"WWW-Authenticate": "Bearer"})
                if self.state.api_key and not _open(path) and not self._authorized(scope) else None)
            if refusal is not None:
                await _drain(receive, DRAIN_BYTES)
                return await _reject(scope, counting_send, refusal)
            # 2. The body, up to the cap.
            limit = self.state.max_upload if path in UPLOAD_ROUTES else self.state.max_body
            body, too_large = await _read_body(scope, receive, limit)
            if too_large:
                return await _reject(scope, counting_send, ApiError(
                    413, f"the request body is larger than {limit} bytes", code="request_too_large"))
            await self.app(scope, _replay(body, receive), counting_send)
        finally:
            self.state.metrics.request(route, status.get("code", 499))

    def _foreign(self, scope) -> ApiError | None:
        """A 403 for a Host this server does not answer to, or an Origin that is not its own; else None."""
        headers = _headers(scope)
        host = headers.get("host", "").lower()
        hosts = getattr(self.state, "hosts", None)
        # Names only, any port: an SSH tunnel or a port forward reaches the server under another local port.
        if hosts is not None and host_name(host) not in hosts:
            return ApiError(403, f"the Host '{host[:80]}' is not a name this server answers to (it listens on "
                            "loopback: use localhost, 127.0.0.1 or [::1])", code="invalid_host")
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, host) and \
                origin.rstrip("/").lower() not in getattr(self.state, "origins", ()):
            return ApiError(403, f"requests from the web page at {origin[:80]} are refused: only this server's own "
                            "page may call it from a browser (a page behind a proxy: start the server with "
                            "--allow-origin ORIGIN)", code="cross_origin")
        return None

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(),
                                                                          self.state.api_key.encode())
        return False


def _headers(scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope.get("headers", ())}


def _same_origin(origin: str, host: str) -> bool:
    """`origin` (scheme://name[:port]) names the server the request came to (its Host header)."""
    try:
        parsed = urlsplit(origin.strip())
    except ValueError:
        return False
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return False  # "null" (a sandboxed frame, a file), or no origin a browser sends
    return _without_default_port(parsed.netloc.lower()) == _without_default_port(host)


def _without_default_port(netloc: str) -> str:
    return netloc.removesuffix(":80").removesuffix(":443")


def _open(path: str) -> bool:
    return path in OPEN_PATHS or (path.startswith(OPEN_PREFIXES) and ".." not in path)


def _route(path: str) -> str:
    """The route a path counts under in the metrics (ids folded)."""
    if path in ROUTES:
        return path
    if path.startswith("/v1/images/") and path.endswith("/content"):
        return "/v1/images/{id}/content"
    if path.startswith("/v1/videos/"):
        return "/v1/videos/{id}/content" if path.endswith("/content") else "/v1/videos/{id}"
    if path.startswith("/v1/models/"):
        return "/v1/models/{id}"
    if path.startswith("/v1/progress/"):
        return "/v1/progress/{id}"
    if path.startswith("/static/"):
        return "/static"
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

