"""The web page of `sana serve --model nano` (one server for the module): the page and its files, the progress
stream fed by the denoising loop, and `/?prompt=...&autorun=1` run in headless Chromium (Debian's
`chromium-headless-shell` or `chromium`; skipped when neither is installed) giving an `<img>` of the asked size with
its settings, and a screenshot."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request

import pytest
from PIL import Image

from tests.serve_helpers import request, running_server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CAPTION = "a large red circle in the center on a white background"
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(["--model", "nano", "--batch-window-ms", "0"], log) as base:
        yield base


def test_the_page_and_its_files(server):
    status, body, headers = request("GET", server + "/")
    page = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    for element in ('id="prompt"', 'id="model"', 'id="size"', 'id="steps"', 'id="guidance"', 'id="seed"', 'id="bar"',
                    'id="gallery"', 'src="/static/app.js"', 'href="/static/style.css"'):
        assert element in page, element
    assert "default-src 'self'" in headers["content-security-policy"]
    status, script, headers = request("GET", server + "/static/app.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"autorun" in script
    assert request("GET", server + "/static/style.css")[0] == 200
    assert request("GET", server + "/static/index.py")[0] == 404
    assert request("GET", server + "/static/..%2Fapp.py")[0] == 404
    # The page offers only the sizes the served model accepts (nano: sides up to 1024 px).
    assert json.loads(request("GET", server + "/healthz")[1])["max_side"] == {"nano": 1024}
    assert b"max_side" in script


def test_the_progress_stream_follows_the_denoising_steps(server):
    progress_id = "test-progress-0001"
    events, opened = [], threading.Event()

    def listen():
        with urllib.request.urlopen(f"{server}/v1/progress/{progress_id}", timeout=120) as stream:
            opened.set()
            for line in stream:
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))
                    if events[-1]["status"] in ("done", "failed", "cancelled"):
                        return

    # The stream answers once its id is known: the request is posted while the listener waits for it.
    listener = threading.Thread(target=listen)
    listener.start()
    time.sleep(0.5)
    answer = request("POST", server + "/v1/images/generations",
                     body={"prompt": CAPTION, "size": "256x256", "num_inference_steps": 4, "progress_id": progress_id})
    assert answer[0] == 200, answer[1]
    listener.join(60)
    assert events[0]["status"] == "queued" and events[-1] == {"status": "done"}
    steps = [(e["step"], e["total"]) for e in events if "step" in e]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
    phases = [e["phase"] for e in events if e["status"] == "running" and "step" not in e]
    assert phases.index("encode") < phases.index("denoise") < phases.index("decode")
    # A finished id answers its final event at once; a malformed id is refused.
    status, body, _ = request("GET", f"{server}/v1/progress/{progress_id}")
    assert status == 200 and body.decode().strip() == 'data: {"status": "done"}'
    assert request("GET", server + "/v1/progress/bad")[0] == 400
    assert opened.is_set()


def test_the_progress_of_an_unknown_id_is_a_404(server):
    started = time.monotonic()
    status, body, _ = request("GET", server + "/v1/progress/never-used-0001")
    assert status == 404 and json.loads(body)["error"]["param"] == "progress_id", body
    assert time.monotonic() - started < 10


def _browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def _chromium(browser: str, url: str, *args: str) -> subprocess.CompletedProcess:
    # Virtual time does not advance while requests are pending, so the budget covers the generation's wait.
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=120000", *args, url], capture_output=True, text=True, timeout=240)


@pytest.mark.slow
@pytest.mark.skipif(_browser() is None, reason="headless Chromium is not installed "
                                               "(apt-get install chromium-headless-shell)")
def test_autorun_draws_an_image_of_the_asked_size_in_chromium(server, tmp_path):
    query = urllib.parse.urlencode({"prompt": CAPTION, "autorun": "1", "size": "256x192", "steps": "3", "seed": "3"})
    url = f"{server}/?{query}"
    result = _chromium(_browser(), url, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert 'data-state="done"' in dom, dom[-3000:]
    assert 'data-natural-size="256x192"' in dom
    assert f'alt="{CAPTION}"' in dom and "<dt>steps</dt><dd>3</dd>" in dom and "<dt>seed</dt><dd>3</dd>" in dom
    assert 'download="a-large-red-circle-in-the-center-on-a-3.png"' in dom

    shot = tmp_path / "page.png"
    result = _chromium(_browser(), url, "--window-size=1000,760", f"--screenshot={shot}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert Image.open(shot).size == (1000, 760)
