"""Starting `sana serve` for a test module and talking to it with the standard library."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tests.cli_helpers import same_threads, sana_executable

STARTUP_SECONDS = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_process(command: list[str], log_path: Path, health_url: str, *, what: str = "the server",
                    env: dict | None = None, cwd: Path | None = None, startup_seconds: float = STARTUP_SECONDS):
    """`command` until the block ends, its output in `log_path`; yields the process once `health_url` answers 200
    (an exit or the time running out first fails with the log)."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + startup_seconds
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if request("GET", health_url)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"{what} did not start:\n" + log_path.read_text()
            time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def running_server(args: list[str], log_path: Path, *, env: dict | None = None):
    """`sana serve ARGS --port P` until the block ends; yields its base URL once /healthz answers."""
    port = free_port()
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", **same_threads(), **(env or {})}
    full_env.pop("SANA_API_KEY", None)
    base = f"http://127.0.0.1:{port}"
    with running_process([sana_executable(), "serve", *args, "--port", str(port)], log_path, base + "/healthz",
                         env=full_env):
        yield base


@contextmanager
def gen_in_background(args: list[str]):
    """`sana gen ARGS` started now, to run while a server starts; yields the process (killed if still running
    when the block ends; read its result with `communicate()`)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", **same_threads()}
    process = subprocess.Popen([sana_executable(), "gen", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def request(method: str, url: str, *, key: str | None = None, body: bytes | dict | None = None,
            content_type: str | None = "application/json", timeout: float = 120,
            headers: dict | None = None) -> tuple[int, bytes, dict]:
    """(status, body, headers); an HTTP error status is returned, not raised. `content_type` None sends none."""
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    headers = {**({"Content-Type": content_type} if body is not None and content_type else {}), **(headers or {})}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    prepared = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(prepared, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read(), dict(error.headers)


@contextmanager
def app_server(state):
    """The app for `state` served by uvicorn on a thread of this process; yields its base URL."""
    import uvicorn

    from sana.serving.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)


def error_of(answer: tuple[int, bytes, dict]) -> dict:
    """The OpenAI-shaped error of an answer (asserting its shape)."""
    error = json.loads(answer[1])["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error
