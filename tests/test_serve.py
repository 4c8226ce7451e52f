"""`sana serve`: the real server (`sana serve --model nano` on a free local port, one for the module) answering
the official OpenAI client, concurrent clients and bad requests; the scheduler and the size caps as units."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run_sana, sana_executable
from serve_helpers import (STARTUP_SECONDS, free_port, gen_in_background, running_process, running_server,
                           same_threads)
from serve_helpers import request as http_request  # the name `request` is a loop variable below

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from PIL import Image  # noqa: E402

from sana.outputs import GenerationRecord, read_metadata  # noqa: E402
from sana.registry import ModelDefaults  # noqa: E402
from sana.serving.admission import ServedModel  # noqa: E402
from sana.serving.scheduler import ClientGone, Job, QueueFull, Scheduler  # noqa: E402

KEY = "test-key-123"
CAPTION = "a large red circle in the center on a white background"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """`sana gen --model nano` of CAPTION with seed 3 and 8 steps, started now (it loads while the server does);
    yields (process, output path)."""
    out = tmp_path_factory.mktemp("gen") / "gen.png"
    with gen_in_background([CAPTION, "--model", "nano", "--seed", "3", "--steps", "8", "--res", "256",
                            "-o", str(out)]) as process:
        yield process, out


@pytest.fixture(scope="module")
def server(tmp_path_factory, reference):
    """`sana serve --model nano` on 127.0.0.1 with an API key; yields (base URL, path of its log)."""
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(["--model", "nano", "--api-key", KEY, "--max-batch", "4", "--batch-window-ms", "300",
                         "--max-queue", "32"], log_path) as base:
        yield base, log_path


@pytest.fixture(scope="module")
def client(server):
    base, _ = server
    return openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _request(method: str, url: str, *, key: str | None = KEY, body: bytes | None = None,
             content_type: str = "application/json") -> tuple[int, bytes, dict]:
    return http_request(method, url, key=key, body=body, content_type=content_type)


def _get(url: str, *, key: str | None = KEY):
    return _request("GET", url, key=key)


def _post(base: str, payload, *, key: str | None = KEY, raw: bytes | None = None):
    body = raw if raw is not None else json.dumps(payload).encode()
    return _request("POST", base + "/v1/images/generations", key=key, body=body)


def _decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def _record(image: Image.Image) -> GenerationRecord:
    return GenerationRecord.from_json(image.info["sana"])


def _batched_forwards(base: str) -> tuple[int, int]:
    """(forwards, forwards of one image) from /metrics."""
    text = _get(base + "/metrics")[1].decode()
    ones = int(re.search(r'^sana_batch_size_bucket\{le="1"\} (\d+)$', text, re.M).group(1))
    total = int(re.search(r"^sana_batch_size_count (\d+)$", text, re.M).group(1))
    return total, ones


# -- the OpenAI client ------------------------------------------------------------------------------------------

def test_openai_client_draws_the_prompt_with_metadata(client):
    from sana.nano.adherence import check_image

    response = client.images.generate(model="nano", prompt=CAPTION, size="256x256", response_format="b64_json")
    assert response.created > 0 and len(response.data) == 1
    image = _decode(response.data[0].b64_json)
    assert image.format == "PNG" and image.size == (256, 256)
    record = _record(image)
    assert (record.prompt, record.model, record.width, record.height) == (CAPTION, "nano", 256, 256)
    assert record.steps == 20 and record.sampler == "flow-dpm" and record.seed is not None  # the preset's defaults
    assert "Steps: 20" in image.info["parameters"]
    attributes = check_image(image.convert("RGB"), CAPTION).attributes()
    assert attributes["color"] and attributes["background"], attributes


def test_extensions_give_the_pixels_sana_gen_draws(client, reference):
    response = client.images.generate(model="nano", prompt=CAPTION, size="256x256", response_format="b64_json",
                                      extra_body={"seed": 3, "num_inference_steps": 8})
    served = _decode(response.data[0].b64_json)
    record = _record(served)
    assert (record.seed, record.steps) == (3, 8)

    process, out = reference
    _, stderr = process.communicate(timeout=STARTUP_SECONDS)
    assert process.returncode == 0, stderr
    assert np.array_equal(np.asarray(served.convert("RGB")), np.asarray(Image.open(out).convert("RGB")))
    written = read_metadata(out)
    assert (written.prompt, written.seed, written.steps, written.guidance, written.sampler) == (
        record.prompt, record.seed, record.steps, record.guidance, record.sampler)


def test_url_format_and_webp(server, client, tmp_path):
    base, _ = server
    response = client.images.generate(model="nano", prompt=CAPTION, size="256x192", n=2, response_format="url",
                                      extra_body={"seed": 5, "num_inference_steps": 2, "output_format": "webp"})
    assert len(response.data) == 2
    seeds = []
    for item in response.data:
        assert item.url.startswith(base + "/v1/images/img_") and item.url.endswith("/content")
        status, data, headers = _get(item.url)
        assert status == 200 and headers["content-type"] == "image/webp"
        path = tmp_path / f"{len(seeds)}.webp"
        path.write_bytes(data)
        assert Image.open(path).size == (256, 192)
        record = read_metadata(path)
        assert record.extra["images_in_batch"] >= 2
        seeds.append(record.seed)
    assert seeds == [5, 6]  # n images: seed, seed + 1, as `sana gen --num` draws them
    assert _get(base + "/v1/images/img_" + "x" * 24 + "/content")[0] == 404
    assert _get(response.data[0].url, key=None)[0] == 401


def test_models_and_health(server):
    base, _ = server
    status, body, _ = _get(base + "/v1/models")
    assert status == 200 and [m["id"] for m in json.loads(body)["data"]] == ["nano"]
    assert json.loads(_get(base + "/healthz", key=None)[1])["status"] == "ok"


# -- concurrency ------------------------------------------------------------------------------------------------

def test_sixteen_concurrent_clients_are_all_answered_in_batches(server):
    base, _ = server
    before = _batched_forwards(base)
    settings = {"model": "nano", "size": "128x128", "num_inference_steps": 2}
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "red", "blue"]
    prompts = [f"a small {colors[i % 8]} {'circle' if i < 8 else 'square'} on the left on a gray background"
               for i in range(16)]

    def ask(i: int):
        return _post(base, {**settings, "prompt": prompts[i], "seed": 100 + i})

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16), timeout=300))
    assert [status for status, _, _ in answers] == [200] * 16, [a[1][:200] for a in answers]
    records = [_record(_decode(json.loads(body)["data"][0]["b64_json"])) for _, body, _ in answers]
    assert [(r.prompt, r.seed) for r in records] == [(p, 100 + i) for i, p in enumerate(prompts)]  # none lost or mixed
    total, ones = _batched_forwards(base)
    assert total - ones > before[0] - before[1], "no forward generated more than one image"
    assert _get(base + "/healthz", key=None)[0] == 200

    # A request batched with others draws the image it draws alone (within rounding).
    batched = [(i, r) for i, r in enumerate(records) if r.extra["images_in_batch"] > 1][:2]
    assert batched
    for i, _ in batched:
        alone = _decode(json.loads(ask(i)[1])["data"][0]["b64_json"])
        assert _record(alone).extra["images_in_batch"] == 1
        together = _decode(json.loads(answers[i][1])["data"][0]["b64_json"])
        difference = np.abs(np.asarray(alone, np.int16) - np.asarray(together, np.int16))
        assert difference.max() <= 2 and difference.mean() < 0.05, (difference.max(), difference.mean())


def test_a_client_that_leaves_is_dropped_before_its_request_runs(server):
    base, _ = server
    forwards = _batched_forwards(base)[0]
    with ThreadPoolExecutor(1) as pool:
        # holds the worker for seconds (past its batch window of 0.3 s before the second request arrives)
        busy = pool.submit(_post, base, {**GOOD, "size": "384x384", "num_inference_steps": 30})
        time.sleep(0.6)
        body = json.dumps({**GOOD, "prompt": "a small blue square on the left on a black background"}).encode()
        with socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1]))) as leaving:
            leaving.sendall(b"POST /v1/images/generations HTTP/1.1\r\n" + _host_header(base)
                            + b"Content-Type: application/json\r\n"
                            + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.4)
        assert busy.result(timeout=120)[0] == 200
    deadline = time.monotonic() + 30
    while "sana_requests_dropped_total 1" not in _get(base + "/metrics")[1].decode():
        assert time.monotonic() < deadline, "the abandoned request was not dropped"
        time.sleep(0.2)
    assert _batched_forwards(base)[0] == forwards + 1  # only the first request ran


def _count(base: str, status: int) -> int:
    found = re.search(rf'^sana_requests_total\{{route="/v1/images/generations",status="{status}"\}} (\d+)$',
                      _get(base + "/metrics")[1].decode(), re.M)
    return int(found.group(1)) if found else 0


def _host_header(base: str) -> bytes:
    """The Host a client of `base` sends (a loopback server answers to its own names only)."""
    return f"Host: {base.removeprefix('http://')}\r\n".encode()


def _leaving(base: str, payload: dict) -> socket.socket:
    """A connection that has sent `payload` and will leave when closed, unanswered."""
    body = json.dumps(payload).encode()
    sock = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    sock.sendall(b"POST /v1/images/generations HTTP/1.1\r\n" + _host_header(base)
                 + b"Content-Type: application/json\r\n"
                 + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def _wait_for_log(log_path, pattern: str, count: int) -> str:
    deadline = time.monotonic() + 60
    while len(re.findall(pattern, log := log_path.read_text(), re.M)) < count:
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
    return log


def test_a_client_that_leaves_while_its_request_runs_is_a_499(server):
    """Alone in its batch (the batch stops) or beside a request that stays (that one is answered): 499 in the
    log and the metrics, never a 5xx."""
    base, log_path = server
    long = {**GOOD, "size": "384x384", "num_inference_steps": 30}
    line = r"WARNING POST /v1/images/generations -> 499 the client disconnected while its request ran$"
    before, errors = _count(base, 499), _count(base, 500)
    with _leaving(base, {**long, "prompt": "a small green circle on the left on a black background"}):
        time.sleep(1.0)  # running by now: the worker was idle
    _wait_for_log(log_path, line, 1)
    _wait_for_log(log_path, r"stopped: every request of the batch was withdrawn$", 1)  # the worker is idle again
    with ThreadPoolExecutor(1) as pool:
        staying = pool.submit(_post, base, long)
        time.sleep(0.05)  # inside the 0.3 s batch window: the two share a forward
        with _leaving(base, {**long, "prompt": "a small blue square on the left on a black background"}):
            time.sleep(1.0)
        assert staying.result(timeout=120)[0] == 200
    log = _wait_for_log(log_path, line, 2)
    assert "-> 500" not in log, log
    assert _count(base, 499) == before + 2 and _count(base, 500) == errors


# -- bad input --------------------------------------------------------------------------------------------------

GOOD = {"model": "nano", "prompt": CAPTION, "size": "128x128", "num_inference_steps": 2}
BAD_BODIES = {
    "missing prompt": ({k: v for k, v in GOOD.items() if k != "prompt"}, 400, "prompt"),
    "size abc": ({**GOOD, "size": "abc"}, 400, "size"),
    "size 0x0": ({**GOOD, "size": "0x0"}, 400, "size"),
    "size 100000x100000": ({**GOOD, "size": "100000x100000"}, 400, "size"),
    "size not a multiple of 32": ({**GOOD, "size": "100x100"}, 400, "size"),
    "n 1000": ({**GOOD, "n": 1000}, 400, "n"),
    "n over the batch": ({**GOOD, "n": 5}, 400, "n"),
    "steps 10000": ({**GOOD, "num_inference_steps": 10000}, 400, "num_inference_steps"),
    "unknown model": ({**GOOD, "model": "dall-e-3"}, 404, "model"),
    "a lora": ({**GOOD, "lora": "/etc/passwd"}, 400, "lora"),
    "unknown sampler": ({**GOOD, "sampler": "euler-a"}, 400, "sampler"),
    "bad output format": ({**GOOD, "output_format": "gif"}, 400, "output_format"),
    "prompt too long": ({**GOOD, "prompt": "x" * 5000}, 400, "prompt"),
    "not an object": ([1, 2], 400, None),
    "guidance NaN": ({**GOOD, "guidance_scale": float("nan")}, 400, "guidance_scale"),
    "n a string": ({**GOOD, "n": "2"}, 400, "n"),
    "n a bool": ({**GOOD, "n": True}, 400, "n"),
    "seed a float": ({**GOOD, "seed": 1.5}, 400, "seed"),
    "output_compression 500": ({**GOOD, "output_compression": 500}, 400, "output_compression"),
}


def _assert_error(status: int, body: bytes, expected_status: int, param: str | None = None) -> dict:
    assert status == expected_status, body[:300]
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param, error
    return error


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_request_is_an_openai_error(server, name):
    base, _ = server
    payload, expected, param = BAD_BODIES[name]
    _assert_error(*_post(base, payload)[:2], expected, param)


def test_messages_say_what_is_wrong(server):
    base, _ = server
    error = _assert_error(*_post(base, None, raw=b"")[:2], 400)
    assert error["message"].startswith("the request body is empty"), error
    error = _assert_error(*_post(base, {**GOOD, "guidance_scale": float("nan")})[:2], 400, "guidance_scale")
    assert "finite number" in error["message"], error
    assert _post(base, {**GOOD, "output_compression": 80})[0] == 200


def test_transport_level_refusals(server):
    base, log_path = server
    _assert_error(*_post(base, GOOD, key=None)[:2], 401)
    _assert_error(*_post(base, GOOD, key="wrong-key")[:2], 401)
    error = _assert_error(*_post(base, None, raw=b'{"prompt": "a red')[:2], 400)
    assert error["code"] == "invalid_json"
    payload = json.dumps({**GOOD, "negative_prompt": "x" * (50 * 2**20)}).encode()
    _assert_error(*_post(base, None, raw=payload)[:2], 413)
    _assert_error(*_get(base + "/v1/nothing")[:2], 404)

    # Still serving, and each refusal was one log line.
    assert _post(base, GOOD)[0] == 200
    assert _get(base + "/healthz", key=None)[0] == 200
    time.sleep(0.2)
    log = log_path.read_text()
    for status in (401, 413):
        assert re.search(rf"^\S+ \S+ WARNING POST /v1/images/generations -> {status} ", log, re.M), log
    assert "Traceback" not in log
    metrics = _get(base + "/metrics")[1].decode()
    assert 'sana_requests_total{route="/v1/images/generations",status="413"} 1' in metrics


def test_open_bind_needs_a_key_or_insecure():
    result = run_sana("serve", "--model", "nano", "--host", "0.0.0.0", env={"SANA_API_KEY": ""})
    assert "without an API key" in assert_one_line_error(result)


def test_an_empty_host_is_a_bad_argument():
    assert "--host is empty" in assert_one_line_error(run_sana("serve", "--model", "nano", "--host", ""))


def test_stopping_the_server_answers_a_running_request_503_at_once(tmp_path):
    """SIGINT while a request runs: the request is answered 503 in the API's error shape, the server exits within
    seconds, and the log has that one line, no traceback."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", **same_threads()}
    env.pop("SANA_API_KEY", None)
    log_path = tmp_path / "server.log"
    with running_process([sana_executable(), "serve", "--model", "nano", "--port", str(port)], log_path,
                         base + "/healthz", env=env) as process, ThreadPoolExecutor(1) as pool:
        running = pool.submit(http_request, "POST", base + "/v1/images/generations", key=None,
                              body={**GOOD, "size": "512x512", "num_inference_steps": 100})
        time.sleep(1.5)
        process.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        status, body, _ = running.result(timeout=30)
        process.wait(30)
        assert time.monotonic() - stopped < 4
    error = _assert_error(status, body, 503)
    assert error["message"] == "the server is shutting down", error
    log = log_path.read_text()
    assert "Traceback" not in log and "Cancel" not in log and "Internal Server Error" not in log, log
    assert len(re.findall(r"-> 503 the server is shutting down$", log, re.M)) == 1, log


def test_without_the_serve_extra_the_error_names_it(tmp_path):
    (tmp_path / "uvicorn.py").write_text('raise ImportError("No module named uvicorn", name="uvicorn")\n')
    result = run_sana("serve", "--model", "nano", env={"PYTHONPATH": str(tmp_path)})
    assert "pip install fastapi uvicorn" in assert_one_line_error(result)


def test_bad_arguments_are_one_line_before_torch_is_imported(tmp_path):
    """An unknown model, a missing LoRA file and a port in use: each the only line, with no model loaded, no
    "serving" claim and no heavy import."""
    from tests.test_cli_habits import heavy_imports, run_profiled

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = {("--model", "bogus"): "unknown model 'bogus'",
                 ("--model", "nano", "--lora", f"style={tmp_path}/absent.safetensors"): "absent.safetensors",
                 ("--model", "nano", "--port", str(port)):
                     f"port {port} on 127.0.0.1 is in use (choose another --port)"}
        for args, expected in cases.items():
            result, lines = run_profiled("serve", *args, cwd=tmp_path)
            assert result.returncode != 0 and len(lines) == 1 and expected in lines[0], lines
            assert heavy_imports(result.stderr) == [], (args, heavy_imports(result.stderr))


# -- units: the scheduler and the size caps -------------------------------------------------------------------

def _job(key: str, images: int = 1, model: str = "m") -> Job:
    return Job(model=model, key=(model, key), request=key, images=images)


def test_scheduler_batches_fifo_by_key_up_to_max_batch():
    scheduler = Scheduler(max_batch=4, window=0.0, max_queue=8)
    jobs = [_job("a"), _job("b"), _job("a", 2), _job("a"), _job("b")]
    for job in jobs:
        scheduler.submit(job)
    assert scheduler.next_batch(0) == [jobs[0], jobs[2], jobs[3]]  # the oldest leads; same key joins, up to 4 images
    assert scheduler.next_batch(0) == [jobs[1], jobs[4]]
    assert scheduler.next_batch(0) == []


def test_scheduler_refuses_when_full_and_drops_gone_clients():
    dropped = []
    scheduler = Scheduler(max_batch=4, window=0.0, max_queue=2, on_drop=dropped.append)
    first, second = _job("a"), _job("a")
    scheduler.submit(first)
    scheduler.submit(second)
    with pytest.raises(QueueFull):
        scheduler.submit(_job("a"))
    first.gone.set()
    assert scheduler.next_batch(0) == [second]
    assert dropped == [first] and isinstance(first.future.exception(0), ClientGone)
    third = _job("a")
    scheduler.submit(third)
    scheduler.withdraw(third)  # dropped at once: its place in the queue is free again
    assert len(scheduler) == 0 and dropped == [first, third] and isinstance(third.future.exception(0), ClientGone)


def test_a_size_the_memory_plan_cannot_fit_is_refused_with_the_reason():
    class Plan:
        def __init__(self, fits):
            self.fits = fits

        def notes(self):
            return ["needs about 80.0 GiB of free RAM; the denoise phase peaks at 79.0 GiB"]

    model = ServedModel(name="m", pipeline=None, family="sana", defaults=ModelDefaults(20, 4.5, 0.0, 8, "flow-dpm", 3.0),
                        resolution=1024, dtype="bf16", device="cuda", created=0,
                        plan_for=lambda w, h, n: Plan(w * h * n <= 1024 * 1024 * 2))
    assert model.size_refusal(1024, 1024, 2) is None
    assert "needs about 80.0 GiB" in model.size_refusal(2048, 2048, 1)
    assert "multiples of 32" in model.size_refusal(1000, 1024, 1)
    assert "from 32 to 4096" in model.size_refusal(8192, 1024, 1)


def test_an_image_to_video_job_without_a_size_takes_the_first_frames_shape():
    from PIL import Image

    from sana.registry import ClipDefaults
    from sana.serving.clips import FirstFrame, clip_size

    defaults = ClipDefaults(steps=50, cfg=6.0, sampler="flow-dpm", i2v_sampler="flow-euler", shift=8.0, frames=81,
                            fps=16.0, motion_score=30, width=832, height=480)
    model = ServedModel(name="v", pipeline=None, family="video", defaults=defaults, resolution=480, dtype="bf16",
                        device="cuda", created=0)
    portrait = FirstFrame(image=Image.new("RGB", (720, 1280)), name="p.png", sha256="0" * 64)
    assert clip_size(model, None) == clip_size(model, "auto") == (832, 480)
    assert clip_size(model, None, portrait) == clip_size(model, "auto", portrait) == (480, 832)
    assert clip_size(model, "832x480", portrait) == (832, 480)  # a size asked for is kept


def test_a_request_naming_a_lora_gets_the_settings_the_lora_carries(tmp_path):
    """An allow-listed RL LoRA carries guidance 1: a request naming it and leaving guidance out samples CFG-free;
    one that sets guidance keeps it; one without the LoRA gets the model's default."""
    from sana.serving.admission import build_job
    from sana.serving.loras import AllowedLora, AllowList
    from sana.serving.schemas import ImageGenerationRequest

    class Plan:
        fits = True

        def notes(self):
            return []

    rl = AllowedLora(name="rl", path=tmp_path / "rl.safetensors", scale=1.0, sha256="0" * 64,
                     sampling={"guidance": 1.0, "steps": 12})
    model = ServedModel(name="m", pipeline=None, family="sana", defaults=ModelDefaults(20, 4.5, 0.0, 8, "flow-dpm", 3.0),
                        resolution=1024, dtype="bf16", device="cuda", created=0, plan_for=lambda w, h, n: Plan(),
                        loras=AllowList({"rl": rl}))

    def request(**body):
        return build_job({"m": model}, ImageGenerationRequest(prompt="a cat", model="m", **body), max_batch=4).request

    assert (request(lora="rl").guidance, request(lora="rl").steps) == (1.0, 12)
    assert request(lora="rl", guidance_scale=3.0).guidance == 3.0
    assert request(lora="rl", num_inference_steps=5).steps == 5
    assert (request().guidance, request().steps) == (4.5, 20)


# -- the pipeline's batching hook -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sana", "sprint"])
def test_a_batch_of_different_prompts_draws_what_each_draws_alone(tmp_path, kind):
    """Tiny random pipeline (every weight noise): requests with their own prompts, negative prompts and seed counts
    in one forward (CFG and PAG on) give each request's images as run alone, within rounding."""
    import torch

    from sana.pipelines.image import ImagePipeline, ImageRequest
    from tests.tiny_pipeline import build_pipeline

    build_pipeline(tmp_path, kind)
    pipe = ImagePipeline.from_pretrained(tmp_path, dtype=torch.float32, device="cpu")
    sprint = kind == "sprint"
    shared = dict(width=64, height=64, steps=2 if sprint else 3, guidance=4.5, sampler="scm" if sprint else "flow-dpm",
                  flow_shift=3.0, pag=0.0 if sprint else 1.5, pag_layers=(1,))
    requests = [ImageRequest(prompt="a red circle on the left on a white background", seeds=[1],
                             negative_prompt="blurry", **shared),
                ImageRequest(prompt="an astronaut riding a horse on the moon", seeds=[7, 8], **shared),
                ImageRequest(prompt="a photo of a cat sleeping on a sunny windowsill, highly detailed", seeds=[2],
                             negative_prompt="a dog", **shared)]
    together = pipe.generate_batch(requests)
    assert [len(r.images) for r in together] == [1, 2, 1]
    pixels = [np.asarray(image, np.int16) for r in together for image in r.images]
    assert min(np.abs(a - b).mean() for i, a in enumerate(pixels) for b in pixels[i + 1:]) > 5  # all different
    for request, batched in zip(requests, together):
        alone = pipe.generate(request)
        for a, b in zip(alone.images, batched.images):
            difference = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16))
            assert difference.max() <= 1, (request.prompt, difference.max())
    with pytest.raises(ValueError):
        pipe.generate_batch([requests[0], ImageRequest(**{**requests[1].__dict__, "steps": 4})])
