"""`sana gen --server URL` / `sana video --server URL`: the command's usual flags sent to a running `sana serve`,
the outputs written here exactly as without `--server` (the same names, the record the server embedded, atomic
writes, the same `--force` rules).

Standard library HTTP only: this path never imports torch (the settings, seeds and output paths are checked and
planned before any request, as a local run checks them before loading).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sana.errors import SanaError, UsageError

from . import console
from .run_output import print_written

TIMEOUT = 600.0  # seconds a request may take (a queued batch of large images)
POLL_SECONDS = 0.5
WARMUP_WAIT_SECONDS = 900.0  # how long to wait for a server that is still warming up (compiling, capturing)
# Flags that configure a local run; the server decided these when it started.
LOCAL_ONLY = {"transformer": "--transformer", "fp8": "--fp8", "max_vram": "--max-vram", "dry_run": "--dry-run"}
LOCAL_DEFAULTS = {"device": ("--device", "auto"), "dtype": ("--dtype", "auto"), "memory": ("--memory", "auto"),
                  "vae_dtype": ("--vae-dtype", "auto")}
EXTENSION_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


class ServerRefused(SanaError):
    """The server answered with an HTTP error; `status` is its code."""

    def __init__(self, message: str, status: int, hint: str | None = None, body: dict | None = None):
        super().__init__(message, hint)
        self.status = status
        self.body = body or {}  # the answer's JSON, where it was JSON


class Server:
    """A running `sana serve` at `url`, with the API key (if any) sent as a bearer token."""

    def __init__(self, url: str, api_key: str | None):
        parsed = urllib.parse.urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"--server {url} is not an http(s) URL", "e.g. --server http://127.0.0.1:8000")
        self.url = f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"
        self.api_key = api_key

    def request(self, method: str, path: str, body: dict | None = None) -> bytes:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            answer = _json_answer(error)
            if error.code == 401:
                raise ServerRefused(f"the server at {self.url} needs an API key" if not self.api_key else
                                    f"the server at {self.url} refused the API key", 401,
                                    "pass --api-key KEY or set SANA_API_KEY" if not self.api_key else
                                    "check --api-key / SANA_API_KEY against the server's") from None
            raise ServerRefused(f"the server refused the request: {_error_message(error, answer)}", error.code,
                                body=answer) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise SanaError(f"cannot reach the server at {self.url} ({reason})",
                            "start one with: sana serve --model MODEL") from None

    def json(self, method: str, path: str, body: dict | None = None) -> Any:
        return json.loads(self.request(method, path, body))

    def health(self) -> dict:
        """/healthz once the server is ready: while it warms up (503, "warming") wait, saying so once."""
        deadline = time.monotonic() + WARMUP_WAIT_SECONDS
        told = False
        while True:
            try:
                return self.json("GET", "/healthz")
            except ServerRefused as error:
                if error.status != 503 or error.body.get("status") != "warming" or time.monotonic() > deadline:
                    raise
            if not told:
                console.info(f"the server at {self.url} is warming up; waiting for it")
                told = True
            time.sleep(1.0)


def _json_answer(error: urllib.error.HTTPError) -> dict:
    try:
        answer = json.loads(error.read())
    except (ValueError, OSError):
        return {}
    return answer if isinstance(answer, dict) else {}


def _error_message(error: urllib.error.HTTPError, answer: dict) -> str:
    """The error's message (OpenAI's shape), or what /healthz says of the server, or the HTTP reason."""
    found = answer.get("error")
    if isinstance(found, dict) and found.get("message"):
        message = found["message"]
    elif answer.get("status") == "unavailable":
        message = "no worker process is running"
    else:
        message = error.reason
    return f"{message} (HTTP {error.code})"


def refuse_local_flags(flags: dict[str, Any]) -> None:
    """Flags that only a local run uses: one line naming the first one given."""
    for key, flag in LOCAL_ONLY.items():
        if flags.get(key):
            raise UsageError(f"{flag} configures a local run; the server decided it when it started",
                             "drop it, or run without --server")
    for key, (flag, default) in LOCAL_DEFAULTS.items():
        if (flags.get(key) or default) != default:
            raise UsageError(f"{flag} configures a local run; the server decided it when it started",
                             "drop it, or run without --server")


def write_output(path: Path, data: bytes, force: bool) -> Path:
    """`data` (a file the server made, its record embedded) written atomically under `path`."""
    from sana.outputs.atomic import atomic_file

    with atomic_file(path, force=force) as temp:
        temp.write_bytes(data)
    return path


# -- images -------------------------------------------------------------------------------------------------------

def generate_images(flags: dict[str, Any], planned_jobs: list, model: str | None, force: bool) -> None:
    """Each planned job (prompt, settings, seeds, paths) as requests of at most the server's batch, several at a
    time (the server may batch them together); each image written to its planned path as it arrives."""
    from .generation import parse_resolution

    server = Server(flags["server"], flags.get("api_key"))
    health = server.health()
    max_batch = int(health.get("max_batch", 1))
    loras = flags.get("lora") or []
    if len(loras) > 1:
        raise UsageError("a server applies one LoRA a request", "give one --lora NAME[:SCALE]")
    requests = []
    for prompt, settings, seeds, paths in planned_jobs:
        fmt = EXTENSION_FORMATS.get(paths[0].suffix.lower(), "png") if paths else "png"
        size = parse_resolution(settings.get("res"))
        body = {"prompt": prompt, "model": model, "size": f"{size[0]}x{size[1]}" if size else None,
                "negative_prompt": settings.get("negative"), "num_inference_steps": settings.get("steps"),
                "guidance_scale": settings.get("cfg"), "pag_scale": settings.get("pag"),
                "pag_layer": settings.get("pag_layer"), "sampler": settings.get("sampler"),
                "flow_shift": settings.get("shift"), "output_format": fmt, "response_format": "b64_json"}
        if loras:
            name, _, scale = loras[0].partition(":")
            body.update(lora=name, lora_scale=float(scale) if scale else None)
        body = {k: v for k, v in body.items() if v is not None}
        for start in range(0, len(seeds), max_batch):
            chunk = slice(start, start + max_batch)
            requests.append(({**body, "seed": seeds[chunk][0], "n": len(seeds[chunk])}, paths[chunk]))

    def send(item):
        body, paths = item
        return server.json("POST", "/v1/images/generations", body), paths

    console.info(f"sending {len(requests)} request(s) to {server.url}")
    with ThreadPoolExecutor(max_workers=min(4, len(requests))) as pool:
        for answer, paths in pool.map(send, requests):
            for item, path in zip(answer["data"], paths):
                print_written(write_output(path, base64.b64decode(item["b64_json"]), force))


# -- clips --------------------------------------------------------------------------------------------------------

def generate_clips(flags: dict[str, Any], planned_jobs: list, firsts: list, model: str | None, force: bool) -> None:
    """Each planned clip as a `/v1/videos` job: created, polled until it completes, its MP4 written to the
    planned path (decoded and written as GIF, WebP or PNG frames where the path asks for one)."""
    server = Server(flags["server"], flags.get("api_key"))
    server.health()
    from .clip_outputs import write_served_clip

    for (prompt, settings, seeds, paths), first in zip(planned_jobs, firsts):
        size = settings.get("res")
        motion = settings.get("motion_score")
        if motion is not None and str(motion).lower() == "none":
            raise UsageError("--motion-score none is not sent to a server", "give a number, or run locally")
        body = {"prompt": prompt, "model": model, "size": _clip_size(size), "num_frames": settings.get("frames"),
                "fps": settings.get("fps"), "negative_prompt": settings.get("negative"),
                "num_inference_steps": settings.get("steps"), "guidance_scale": settings.get("cfg"),
                "sampler": settings.get("sampler"), "flow_shift": settings.get("shift"),
                "motion_score": int(motion) if motion is not None else None}
        if first is not None:
            body["input_reference"] = "data:image/png;base64," + base64.b64encode(_png(first.image)).decode()
        body = {k: v for k, v in body.items() if v is not None}
        for seed, path in zip(seeds, paths):
            job = server.json("POST", "/v1/videos", {**body, "seed": seed})
            while job["status"] in ("queued", "in_progress"):
                time.sleep(POLL_SECONDS)
                job = server.json("GET", f"/v1/videos/{job['id']}")
            if job["status"] != "completed":
                error = job.get("error") or {}
                raise SanaError(f"the server's clip failed: {error.get('message', job['status'])}")
            data = server.request("GET", f"/v1/videos/{job['id']}/content")
            print_written(write_served_clip(path, data, force))  # an MP4, converted for another format


def _clip_size(res: Any) -> str | None:
    from .generation import CLIP_NAMED_SIZES, parse_resolution

    size = parse_resolution(res, CLIP_NAMED_SIZES)
    return f"{size[0]}x{size[1]}" if size else None


def _png(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
