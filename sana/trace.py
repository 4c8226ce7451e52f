"""A start-up timeline for measuring where a fresh process's time goes: with `SANA_TRACE=FILE` set, `mark(event)`
appends one JSON line (wall time, thread, event) to FILE, and `span(event)` marks a begin and an end. Unset, each
call is one dictionary lookup.

Profilers answer this badly for `sana gen`: cProfile sees the main thread only, while the components load on
threads of their own, and the GPU's queue runs beside all of them. `scripts/bench_first_image.py --trace` reads the
lines back relative to the moment it started the process. No torch here: the CLI marks events before importing it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager

ENV = "SANA_TRACE"


def enabled() -> bool:
    return bool(os.environ.get(ENV))


def mark(event: str, **fields) -> None:
    """Append `event` (with `fields`) at the current wall time, when tracing."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"t": time.time(), "thread": threading.current_thread().name, "event": event, **fields})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:  # one write of one line under O_APPEND: threads' lines never interleave
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


@contextmanager
def span(event: str, **fields):
    """Mark `event begin` and `event end` around the block (the end also when it raises)."""
    mark(f"{event} begin", **fields)
    try:
        yield
    finally:
        mark(f"{event} end", **fields)


def read(path, origin: float) -> list[dict]:
    """The events of a trace file, each with `s`: seconds after `origin` (a `time.time()` value)."""
    events = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            record["s"] = record["t"] - origin
            events.append(record)
    return sorted(events, key=lambda r: r["t"])


def timeline(events: list[dict]) -> str:
    """One line an event: seconds after the origin, thread, event, and a span's length at its end."""
    begun: dict[tuple[str, str, str], float] = {}
    lines = []
    for r in events:
        name, extra = r["event"], {k: v for k, v in r.items() if k not in ("t", "s", "thread", "event")}
        took = ""
        if name.endswith(" begin"):
            begun[(r["thread"], name[: -len(" begin")], json.dumps(extra, sort_keys=True))] = r["s"]
        elif name.endswith(" end"):
            start = begun.pop((r["thread"], name[: -len(" end")], json.dumps(extra, sort_keys=True)), None)
            took = f"  ({r['s'] - start:.3f} s)" if start is not None else ""
        detail = " ".join(f"{k}={v}" for k, v in extra.items())
        lines.append(f"{r['s']:8.3f}  {r['thread'][:14]:<14}  {name}{' ' + detail if detail else ''}{took}")
    return "\n".join(lines)
