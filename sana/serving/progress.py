"""Progress of queued and running jobs, for whoever streams it (`GET /v1/progress/{id}`, server-sent events).

The worker thread publishes each job's phases and denoising steps under the job's progress id (chosen by the
client, e.g. the web page); each stream gets the latest event at once, then every later one, until a final one
(`done`, `failed`, `cancelled`). A bounded number of ids is remembered, so a stream opened a little after its
request still starts from where the job is.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from typing import AsyncIterator

FINAL = ("done", "failed", "cancelled")
KEEPALIVE_SECONDS = 15.0
UNKNOWN_GRACE_SECONDS = 5.0  # a client (the web page) may open the stream just before it posts the request


class UnknownProgress(Exception):
    """No job has published under the id (nor did one within the grace period)."""


class ProgressHub:
    def __init__(self, *, max_ids: int = 512):
        self.max_ids = max_ids
        self._latest: OrderedDict[str, dict] = OrderedDict()
        self._streams: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Queue]]] = {}
        self._lock = threading.Lock()

    def publish(self, progress_id: str | None, event: dict) -> None:
        """Record `event` ({"status": ..., ...}) as the id's latest and hand it to its streams (any thread)."""
        if progress_id is None:
            return
        with self._lock:
            self._latest[progress_id] = event
            self._latest.move_to_end(progress_id)
            while len(self._latest) > self.max_ids:
                self._latest.popitem(last=False)
            streams = list(self._streams.get(progress_id, ()))
        for loop, queue in streams:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # that stream's loop has closed
                pass

    def close(self) -> None:
        """The server is stopping: every open stream ends (with a final event)."""
        with self._lock:
            streams = [entry for entries in self._streams.values() for entry in entries]
        event = {"status": "failed", "message": "the server is shutting down"}
        for loop, queue in streams:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:
                pass

    def latest(self, progress_id: str) -> dict | None:
        with self._lock:
            return self._latest.get(progress_id)

    async def stream(self, progress_id: str, keepalive: float = KEEPALIVE_SECONDS,
                     grace: float = UNKNOWN_GRACE_SECONDS) -> AsyncIterator[dict | None]:
        """The id's events from the latest on, ending after a final one; None every `keepalive` seconds of quiet
        (a comment line keeps proxies from closing the stream). UnknownProgress, before anything is yielded, for
        an id nothing has published under within `grace` seconds."""
        queue: asyncio.Queue = asyncio.Queue()
        entry = (asyncio.get_running_loop(), queue)
        with self._lock:
            self._streams.setdefault(progress_id, []).append(entry)
            latest = self._latest.get(progress_id)
        try:
            if latest is None:
                try:
                    latest = await asyncio.wait_for(queue.get(), timeout=grace)
                except asyncio.TimeoutError:
                    raise UnknownProgress(progress_id) from None
            if latest is not None:
                yield latest
                if latest.get("status") in FINAL:
                    return
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=keepalive)
                except asyncio.TimeoutError:
                    yield None
                    continue
                yield event
                if event.get("status") in FINAL:
                    return
        finally:
            with self._lock:
                streams = self._streams.get(progress_id, [])
                if entry in streams:
                    streams.remove(entry)
                if not streams:
                    self._streams.pop(progress_id, None)
