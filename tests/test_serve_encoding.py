"""`sana serve`'s encoding threads and warm-up on the nano model (CPU): the next batch generates while the last one
is encoded (shown by the order of recorded events, a gate that only an overlapping worker opens), a job's images
keep their seed order however their encoding finishes, an encoding error answers only its own job (a 5xx OpenAI
error over HTTP, the server serving on), and /healthz says "warming" (503) until the warm-up is done, then "ok".

The worker and the app run in this process (uvicorn on a thread), so the encoder and the pipeline can be
instrumented; the `--warmup` flag is checked on a real `sana serve` at the end."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import threading
import time
from contextlib import contextmanager

import pytest

from tests.serve_helpers import app_server, error_of, request, running_server

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from PIL import Image  # noqa: E402

import sana.outputs.images as images_module  # noqa: E402
from sana.outputs import GenerationRecord  # noqa: E402
from sana.serving.admission import build_job  # noqa: E402
from sana.serving.metrics import Metrics  # noqa: E402
from sana.serving.scheduler import Scheduler  # noqa: E402
from sana.serving.schemas import ImageGenerationRequest  # noqa: E402
from sana.serving.warmup import should_warm_up  # noqa: E402
from sana.serving.worker import Worker  # noqa: E402

FIRST = "a small red circle on the left on a white background"
SECOND = "a small blue square on the right on a black background"
POISON = "a small green triangle at the top on a gray background"
GATE_SECONDS = 60  # how long a gate waits for what an overlapping worker would do; a serial one waits it out
SIZE, STEPS = "64x64", 2


@pytest.fixture(scope="module")
def nano():
    """The nano model as `sana serve` loads it, its default steps cut to 2 (so a warm-up costs little here)."""
    from sana_cli.serve_models import load_model

    model = load_model("nano", device="cpu", dtype="auto", memory="auto", max_vram=None, max_batch=2)
    model.defaults = dataclasses.replace(model.defaults, steps=2)
    return model


def job(model, prompt: str, seed: int, n: int = 1):
    body = ImageGenerationRequest(prompt=prompt, model="nano", size=SIZE, num_inference_steps=STEPS, seed=seed, n=n)
    return build_job({"nano": model}, body, max_batch=2)


def record_of(data: bytes) -> GenerationRecord:
    return GenerationRecord.from_json(Image.open(io.BytesIO(data)).info["sana"])


@contextmanager
def running_worker(model, *, max_batch: int, jobs: list, encode_threads: int = 2):
    """A worker over a scheduler that already holds `jobs` (so jobs of one key share a batch); stopped after."""
    scheduler = Scheduler(max_batch=max_batch, window=0.0, max_queue=16)
    for queued in jobs:
        scheduler.submit(queued)
    worker = Worker({"nano": model}, scheduler, Metrics(), encode_threads=encode_threads)
    worker.start()
    try:
        yield worker
    finally:
        worker.stop()


def serve_state(model, *, warmup: bool = False):
    from sana.serving.app import ServerState

    return ServerState(models={"nano": model}, scheduler=Scheduler(max_batch=2, window=0.0, max_queue=16),
                       max_batch=2, warmup=warmup)


# -- encoding off the worker thread ------------------------------------------------------------------------------

def test_the_next_batch_generates_while_the_last_one_is_encoded(nano, monkeypatch):
    log, second_started = [], threading.Event()
    generate, encode = nano.pipeline.generate_batch, images_module.image_bytes

    def recording_generate(requests, events=None):
        log.append(("generate", requests[0].prompt))
        if requests[0].prompt == SECOND:
            second_started.set()
        return generate(requests, events)

    def gated_encode(image, record, fmt):
        if record.prompt == FIRST:  # held until batch 2 generates: only a worker that moved on lets that happen
            log.append(("batch 2 began while batch 1 was encoding", second_started.wait(GATE_SECONDS)))
        data = encode(image, record, fmt)
        log.append(("encoded", record.prompt))
        return data

    monkeypatch.setattr(nano.pipeline, "generate_batch", recording_generate)
    monkeypatch.setattr(images_module, "image_bytes", gated_encode)
    jobs = [job(nano, FIRST, 1), job(nano, SECOND, 2)]
    with running_worker(nano, max_batch=1, jobs=jobs):
        answers = [queued.future.result(timeout=300) for queued in jobs]
    assert ("batch 2 began while batch 1 was encoding", True) in log, log
    assert log.index(("generate", FIRST)) < log.index(("generate", SECOND)) < log.index(("encoded", FIRST)), log
    assert [(record_of(a[0]).prompt, record_of(a[0]).seed) for a in answers] == [(FIRST, 1), (SECOND, 2)]


def test_a_jobs_images_keep_their_seed_order(nano, monkeypatch):
    log, later_done = [], threading.Event()
    encode = images_module.image_bytes

    def reversed_encode(image, record, fmt):
        if record.seed == 11:  # the first image finishes after the second
            log.append(("second image encoded first", later_done.wait(GATE_SECONDS)))
        data = encode(image, record, fmt)
        log.append(("encoded", record.seed))
        if record.seed == 12:
            later_done.set()
        return data

    monkeypatch.setattr(images_module, "image_bytes", reversed_encode)
    pair = job(nano, FIRST, 11, n=2)
    with running_worker(nano, max_batch=2, jobs=[pair]):
        answer = pair.future.result(timeout=300)
    assert log == [("encoded", 12), ("second image encoded first", True), ("encoded", 11)], log
    assert [record_of(data).seed for data in answer] == [11, 12]


def poison_the_encoder(monkeypatch) -> None:
    """Make encoding fail for the POISON prompt's images only."""
    encode = images_module.image_bytes

    def failing_encode(image, record, fmt):
        if record.prompt == POISON:
            raise OSError("the encoder broke")
        return encode(image, record, fmt)

    monkeypatch.setattr(images_module, "image_bytes", failing_encode)


def test_an_encoding_error_fails_only_its_job(nano, monkeypatch):
    poison_the_encoder(monkeypatch)
    poisoned, good = job(nano, POISON, 5), job(nano, FIRST, 6)
    with running_worker(nano, max_batch=2, jobs=[poisoned, good]) as worker:
        answer = good.future.result(timeout=300)
        error = poisoned.future.exception(timeout=300)
    assert worker.metrics.batch_sizes.total == 1 and worker.metrics.batch_sizes.sum == 2  # one forward for both
    assert record_of(answer[0]).prompt == FIRST
    assert isinstance(error, OSError) and "the encoder broke" in str(error)


def test_an_encoding_error_is_a_5xx_and_the_server_serves_on(nano, monkeypatch):
    poison_the_encoder(monkeypatch)
    settings = {"model": "nano", "size": SIZE, "num_inference_steps": STEPS, "seed": 3}
    with app_server(serve_state(nano)) as base:
        failed = request("POST", base + "/v1/images/generations", body={**settings, "prompt": POISON})
        assert failed[0] == 500, failed[1][:300]
        error = error_of(failed)
        assert error["code"] == "generation_failed" and "the encoder broke" in error["message"]
        served = request("POST", base + "/v1/images/generations", body={**settings, "prompt": FIRST})
        assert served[0] == 200, served[1][:300]
        assert record_of(base64.b64decode(json.loads(served[1])["data"][0]["b64_json"])).prompt == FIRST
        assert request("GET", base + "/healthz")[0] == 200


# -- the warm-up --------------------------------------------------------------------------------------------------

def test_healthz_says_warming_until_the_warm_up_is_done(nano, monkeypatch):
    calls, release = [], threading.Event()
    generate = nano.pipeline.generate_batch

    def gated_generate(requests, events=None):
        calls.append([(len(r.seeds), r.width, r.height, r.steps) for r in requests])
        assert release.wait(GATE_SECONDS)
        return generate(requests, events)

    monkeypatch.setattr(nano.pipeline, "generate_batch", gated_generate)
    with app_server(serve_state(nano, warmup=True)) as base:
        status, body, _ = request("GET", base + "/healthz")
        assert status == 503 and json.loads(body)["status"] == "warming", body
        assert json.loads(body)["warmup_s"] is None
        release.set()
        deadline = time.monotonic() + 300
        while (answer := request("GET", base + "/healthz"))[0] != 200:
            assert answer[0] == 503 and time.monotonic() < deadline, answer
            time.sleep(0.1)
        health = json.loads(answer[1])
        assert health["status"] == "ok" and health["warmup_s"] > 0
    # the default request (the native square, the default steps) alone, then a full batch of them
    assert calls == [[(1, 256, 256, 2)], [(1, 256, 256, 2), (1, 256, 256, 2)]]


def test_warm_up_by_default_only_on_an_accelerator():
    assert should_warm_up(None, ["cuda:0", "cuda:1"]) and should_warm_up(None, ["mps"])
    assert not should_warm_up(None, ["cpu"]) and not should_warm_up(None, [])
    assert should_warm_up(True, ["cpu"]) and not should_warm_up(False, ["cuda"])


def test_the_warmup_flag_warms_a_cpu_server(tmp_path):
    with running_server(["--model", "nano", "--warmup", "--max-batch", "1"], tmp_path / "server.log") as base:
        health = json.loads(request("GET", base + "/healthz")[1])
        assert health["status"] == "ok" and health["warmup_s"] > 0
        answer = request("POST", base + "/v1/images/generations",
                         body={"prompt": FIRST, "size": "128x128", "num_inference_steps": 2})
        assert answer[0] == 200, answer[1][:300]
    log = (tmp_path / "server.log").read_text()
    assert "warming up first" in log and "warmed up in" in log and "nano (1 image(s) at 256x256, 20 steps)" in log, log


@pytest.mark.slow
def test_worker_processes_warm_up_and_answer(tmp_path):
    args = ["--model", "nano", "--gpus", "2", "--device", "cpu", "--warmup", "--max-batch", "1"]
    with running_server(args, tmp_path / "server.log") as base:
        health = json.loads(request("GET", base + "/healthz")[1])
        assert health["status"] == "ok" and health["warmup_s"] > 0
        answer = request("POST", base + "/v1/images/generations",
                         body={"prompt": FIRST, "size": "128x128", "num_inference_steps": 2, "n": 1})
        assert answer[0] == 200, answer[1][:300]
    log = (tmp_path / "server.log").read_text()
    assert log.count("worker process on cpu warmed up in") == 2, log
