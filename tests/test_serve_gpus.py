"""`sana serve --gpus 2 --device cpu --model nano`: two worker processes behind the one queue (the test's stand-in
for two GPUs). Concurrent requests are all answered, both processes run batches, progress comes back from them,
the pixels are the pipeline's, LoRAs from the allow-list are merged in the workers, and a worker process that
dies is noticed, reported and restarted."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli_helpers import assert_one_line_error, run_sana
from tests.serve_helpers import error_of, free_port, request, running_server
from tests.test_serve_client import write_lora

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

CAPTION = "a small green triangle at the top on a white background"
SIZES = ("256x256", "256x192", "192x256", "224x224")  # different sizes never share a forward


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    return write_lora(tmp_path_factory.mktemp("lora") / "style.safetensors")


@pytest.fixture(scope="module")
def server(tmp_path_factory, lora):
    folder = tmp_path_factory.mktemp("serve")
    args = ["--model", "nano", "--gpus", "2", "--device", "cpu", "--batch-window-ms", "0", "--lora", f"style={lora}"]
    with running_server(args, folder / "server.log") as base:
        yield base


def pipeline_image(record_image: Image.Image, loras=()) -> np.ndarray:
    """The image the pipeline draws in this process with the record's settings (CAPTION, seed 21, 3 steps)."""
    from sana.hub import resolve_model
    from sana.outputs import GenerationRecord
    from sana.pipelines.image import ImagePipeline, ImageRequest

    record = GenerationRecord.from_json(record_image.info["sana"])
    pipe = ImagePipeline.from_pretrained(resolve_model("nano").path, dtype=torch.float32, device="cpu", loras=loras)
    alone = pipe.generate(ImageRequest(prompt=CAPTION, seeds=[21], width=record_image.width,
                                       height=record_image.height, steps=3, guidance=record.guidance,
                                       sampler=record.sampler, flow_shift=record.flow_shift, pag=record.pag,
                                       pag_layers=tuple(record.pag_layers) or (8,)))
    return np.asarray(alone.images[0], np.int16)


def generate(server: str, size: str, **body) -> Image.Image:
    answer = request("POST", server + "/v1/images/generations",
                     body={"prompt": CAPTION, "size": size, "num_inference_steps": 3, "seed": 21, **body})
    assert answer[0] == 200, answer[1]
    image = Image.open(io.BytesIO(base64.b64decode(json.loads(answer[1])["data"][0]["b64_json"])))
    image.load()
    return image


@pytest.mark.slow
def test_two_worker_processes_answer_concurrent_requests(server):
    with ThreadPoolExecutor(len(SIZES) * 2) as pool:
        images = list(pool.map(lambda size: generate(server, size), SIZES * 2))
    assert [f"{i.width}x{i.height}" for i in images] == list(SIZES * 2)
    for first, again in zip(images[: len(SIZES)], images[len(SIZES):]):  # whichever process drew it
        assert np.array_equal(np.asarray(first), np.asarray(again))
    workers = json.loads(request("GET", server + "/healthz")[1])["workers"]
    assert len(workers) == 2 and len(SIZES) <= sum(w["batches"] for w in workers) <= 2 * len(SIZES)
    assert all(w["batches"] >= 1 for w in workers), workers

    # The pixels of the pipeline run here with the record's settings.
    difference = np.abs(pipeline_image(images[0]) - np.asarray(images[0].convert("RGB"), np.int16))
    assert difference.max() <= 1


def test_progress_and_loras_cross_the_process_boundary(server, lora):
    events = []
    done = threading.Event()

    def listen():
        import urllib.request

        with urllib.request.urlopen(f"{server}/v1/progress/gpus-progress-1", timeout=120) as stream:
            for line in stream:
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))
                    if events[-1]["status"] == "done":
                        break
        done.set()

    threading.Thread(target=listen, daemon=True).start()
    styled_image = generate(server, "256x256", lora="style", progress_id="gpus-progress-1")
    assert done.wait(60)
    assert [e["step"] for e in events if "step" in e] == [1, 2, 3]
    # the worker merged the LoRA: its pixels are the pipeline's with it, and not those without it
    styled = np.asarray(styled_image.convert("RGB"), np.int16)
    assert np.abs(pipeline_image(styled_image, loras=[(lora, 1.0)]) - styled).max() <= 1
    base = np.asarray(generate(server, "256x256").convert("RGB"), np.int16)
    assert np.abs(styled - base).mean() > 0.05
    answer = request("POST", server + "/v1/images/generations", body={"prompt": "x", "lora": "other"})
    assert answer[0] == 400 and error_of(answer)["param"] == "lora"
    answer = request("POST", server + "/v1/images/generations", timeout=30,
                     body={"prompt": "x", "pag_scale": 2.0, "pag_layer": 99})  # the DiT has 8 blocks
    assert answer[0] == 400 and error_of(answer)["param"] == "pag_layer", answer[1]


def test_gpus_without_gpus_or_with_clip_models_is_one_line(tmp_path):
    port = ("--port", str(free_port()))  # the server binds its port first: the default may be someone else's
    if not torch.cuda.is_available():
        assert "CUDA device" in assert_one_line_error(run_sana("serve", "-m", "nano", "--gpus", "2", *port),
                                                       after_progress=True)
    message = assert_one_line_error(run_sana("serve", "-m", "nano", "--gpus", "2", "--device", "cuda:1", *port),
                                    after_progress=True)
    assert "--device auto, cuda or cpu" in message
    result = run_sana("serve", "-m", "nano", "-m", "nano-video", "--gpus", "2", "--device", "cpu", *port,
                      env={"TMPDIR": str(tmp_path)})
    assert "clip model" in assert_one_line_error(result, after_progress=True)
    assert list(tmp_path.iterdir()) == []  # no clip folder left behind


def _health(base: str) -> tuple[int, dict]:
    status, body, _ = request("GET", base + "/healthz")
    return status, json.loads(body)


def _wait_for(condition, what: str, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
    return found


@pytest.mark.slow
def test_a_worker_process_that_dies_fails_its_requests_at_once_and_is_restarted(tmp_path):
    """kill -9 both worker processes while each runs a request: both requests are answered 503 at once, /healthz
    and new requests say no worker is left (503), the processes are reaped and started again (they load the model
    again), and then requests are served."""
    long = {"prompt": CAPTION, "size": "512x512", "num_inference_steps": 100}
    args = ["--model", "nano", "--gpus", "2", "--device", "cpu", "--max-batch", "1", "--batch-window-ms", "0"]
    with running_server(args, tmp_path / "server.log") as base, ThreadPoolExecutor(2) as pool:
        status, health = _health(base)
        pids = [w["pid"] for w in health["workers"]]
        assert status == 200 and [w["state"] for w in health["workers"]] == ["ok", "ok"], health
        running = [pool.submit(request, "POST", base + "/v1/images/generations", body={**long, "seed": seed})
                   for seed in (1, 2)]
        _wait_for(lambda: sum(w["batches"] for w in _health(base)[1]["workers"]) == 2, "both requests running")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        answers = [future.result(timeout=30) for future in running]
        assert time.monotonic() - killed < 10
        for answer in answers:
            assert answer[0] == 503 and error_of(answer)["code"] == "worker_lost", answer[1]

        status, health = _health(base)
        assert status == 503 and health["status"] == "unavailable" and len(health["lost_workers"]) == 2, health
        answer = request("POST", base + "/v1/images/generations", body={**long, "num_inference_steps": 2})
        assert answer[0] == 503 and error_of(answer)["code"] == "no_workers" and "retry-after" in answer[2], answer
        for pid in pids:  # reaped: no defunct process left
            assert not os.path.exists(f"/proc/{pid}"), open(f"/proc/{pid}/status").read()

        health = _wait_for(lambda: (found := _health(base)[1])["status"] == "ok" and found,
                           "the worker processes did not come back")
        assert not set(pids) & {w["pid"] for w in health["workers"]}, health
        answer = request("POST", base + "/v1/images/generations", body={**long, "size": "128x128",
                                                                         "num_inference_steps": 2})
        assert answer[0] == 200, answer[1]
    log = (tmp_path / "server.log").read_text()
    assert log.count("(killed by SIGKILL): 1 running request(s) failed; restarting it (it loads the models again)") \
        == 2, log
    assert log.count("restarted (pid") == 2, log


def test_restarts_are_limited():
    from sana.serving.metrics import Metrics
    from sana.serving.processes import RESTART_LIMIT, ProcessPool
    from sana.serving.progress import ProgressHub
    from sana.serving.scheduler import Scheduler

    pool = ProcessPool({}, Scheduler(max_batch=1, window=0, max_queue=1), Metrics(), ProgressHub(), loader=dict,
                       spec={}, devices=["cpu"])
    assert [pool._may_restart(0) for _ in range(RESTART_LIMIT + 1)] == [True] * RESTART_LIMIT + [False]
