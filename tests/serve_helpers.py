"""Starting `sana serve` for a test module and talking to it with the standard library."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.cli_helpers import sana_executable

STARTUP_SECONDS = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(args: list[str], log_path: Path, *, env: dict | None = None):
    """`sana serve ARGS --port P` until the block ends; yields its base URL once /healthz answers."""
    port = free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", **(env or {})}
    full_env.pop("SANA_API_KEY", None)
    with open(log_path, "w") as log:
        process = subprocess.Popen([sana_executable(), "serve", *args, "--port", str(port)], stdout=log,
                                   stderr=subprocess.STDOUT, env=full_env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if request("GET", base + "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not start:\n" + log_path.read_text()
            time.sleep(0.5)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def request(method: str, url: str, *, key: str | None = None, body: bytes | dict | None = None,
            content_type: str = "application/json", timeout: float = 120) -> tuple[int, bytes, dict]:
    """(status, body, headers); an HTTP error status is returned, not raised."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    headers = {"Content-Type": content_type} if body is not None else {}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    prepared = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(prepared, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


def error_of(answer: tuple[int, bytes, dict]) -> dict:
    """The OpenAI-shaped error of an answer (asserting its shape)."""
    error = json.loads(answer[1])["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error
