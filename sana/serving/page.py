"""The web page and the progress stream behind its bar.

- `GET /`: the page (`static/index.html`: plain HTML, JS and CSS shipped as package data, no build step);
  `/?prompt=...&autorun=1` fills the prompt and submits on load;
- `GET /static/{name}`: its script and style sheet (only the files shipped; no paths);
- `GET /v1/progress/{id}`: server-sent events of a job's progress (`progress.ProgressHub`), for the id a request
  named in `progress_id`: `{"status": "queued" | "running" | "done" | "failed" | "cancelled", "phase", "step",
  "total"}`; 404 for an id nothing has published under (after a few seconds' grace: the page opens the stream
  just before it posts its request).
"""

from __future__ import annotations

import json
from importlib import resources

from fastapi import FastAPI, Path, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from .progress import UnknownProgress
from .schemas import PROGRESS_ID, ApiError

STATIC_TYPES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
# The page loads nothing from elsewhere; images are data: / blob: URLs made by its script.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
                               "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def static_text(name: str) -> str:
    return resources.files("sana.serving").joinpath("static", name).read_text(encoding="utf-8")


def add_page_routes(app: FastAPI, state) -> None:
    page = static_text("index.html")
    assets = {name: static_text(name) for name in STATIC_TYPES}

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/static/{name}")
    async def static(name: str):
        if name not in assets:
            raise ApiError(404, "no such file", code="not_found")
        return Response(assets[name], media_type=STATIC_TYPES[name], headers=PAGE_HEADERS)

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    @app.get("/v1/progress/{progress_id}")
    async def progress(request: Request, progress_id: str = Path(pattern=PROGRESS_ID)):
        # The first event is awaited before the answer starts, so that an unknown id can still be a 404.
        stream = state.progress.stream(progress_id)
        try:
            first = await anext(stream)
        except UnknownProgress:
            raise ApiError(404, "no request with this progress id is queued, running or recently finished",
                           param="progress_id", code="not_found") from None

        async def events():
            event = first
            try:
                while True:
                    yield ": keep-alive\n\n" if event is None else f"data: {json.dumps(event)}\n\n"
                    if await request.is_disconnected():
                        return
                    event = await anext(stream)
            except StopAsyncIteration:
                return
            finally:
                await stream.aclose()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})
