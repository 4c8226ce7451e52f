"""What `sana serve`'s routes refuse before any generation, on an app served in this process with stand-in models
(no weights): content types and encodings, blank prompts, OpenAI options that would change the answer, PAG
layers past the DiT, cross-site requests and foreign Host headers, the headers of 401 / 429 / 503 answers,
`GET /v1/models/{id}`, clip frame caps, oversized first frames, and where a clip's record gets its memory plan and
a served LoRA its name."""

from __future__ import annotations

import json
import struct
import zlib
from types import SimpleNamespace

import pytest

from tests.serve_helpers import app_server, error_of, request

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from sana.registry import ClipDefaults, ModelDefaults  # noqa: E402
from sana.serving.admission import ServedModel  # noqa: E402
from sana.serving.schemas import ApiError, VideoGenerationRequest  # noqa: E402

KEY = "requests-key-1"
IMAGES = "/v1/images/generations"
GOOD = {"prompt": "a red circle", "model": "img", "size": "256x256"}


class Plan:
    fits = True

    def __init__(self, width=0, height=0, images=1, frames=1):
        self.work = (width, height, images, frames)

    def notes(self):
        return []

    def record(self):
        width, height, _, frames = self.work
        return {"tier": "cpu", "clip": f"clip {frames} frames at {width}x{height}"}


class Idle:
    """A runner that takes no batches (so admitted jobs wait), reporting `alive` worker processes."""

    warming, warmup_seconds, devices, batches = False, None, ["cpu"], [0]

    def __init__(self, alive: int = 1, restarting: int = 0):
        self.alive, self.restarting = alive, restarting

    def workers(self):
        return [{"device": "cpu", "state": "ok" if self.alive else "restarting"}]

    def start(self):
        pass

    def stop(self, timeout: float = 30.0):
        pass


def image_model(**fields) -> ServedModel:
    defaults = ModelDefaults(steps=20, cfg=4.5, pag=0.0, pag_layer=8, sampler="flow-dpm", shift=3.0, resolution=256)
    return ServedModel(name="img", pipeline=None, family="sana", defaults=defaults, resolution=256, dtype="fp32",
                       device="cpu", created=1, plan_for=lambda *work: Plan(*work), **fields)


def video_model() -> ServedModel:
    defaults = ClipDefaults(steps=2, cfg=6.0, sampler="flow-dpm", i2v_sampler="flow-euler", shift=8.0, frames=17,
                            fps=16.0, motion_score=None, width=128, height=128)
    pipeline = SimpleNamespace(
        vae=SimpleNamespace(geometry=SimpleNamespace(temporal=4)),
        transformer=SimpleNamespace(config=SimpleNamespace(patch_size=(1, 2, 2), rope_max_seq_len=1024)),
        clip_layout=lambda r: SimpleNamespace(latent=(16, (r.frames - 1) // 4 + 1, r.height // 8, r.width // 8),
                                              width=r.width, height=r.height))
    return ServedModel(name="vid", pipeline=pipeline, family="video", defaults=defaults, resolution=128,
                       dtype="fp32", device="cpu", created=1, plan_for=lambda *work: Plan(*work))


def make_state(*, runner=None, max_queue: int = 8, **fields):
    """A server's state around the stand-in image model (8 blocks), with the API key; no Host check."""
    from sana.serving.app import ServerState
    from sana.serving.scheduler import Scheduler

    return ServerState(models={"img": image_model(num_layers=8)}, api_key=KEY, max_batch=2, runner=runner or Idle(),
                       scheduler=Scheduler(max_batch=2, window=0.0, max_queue=max_queue), **fields)


@pytest.fixture(scope="module")
def server():
    """The app as `sana serve` on loopback runs it: answering to loopback names only, one origin allowed."""
    from sana.serving.guard import LOOPBACK_NAMES

    state = make_state(origins=frozenset({"https://sana.example.com"}), hosts=LOOPBACK_NAMES)
    with app_server(state) as base:
        yield base


def post(base: str, body, *, content_type: str = "application/json", headers: dict | None = None,
         path: str = IMAGES):
    # A request admitted here waits for a runner that takes nothing: the timeout fails such a test.
    return request("POST", base + path, key=KEY, body=body, timeout=30,
                   headers={"Content-Type": content_type, **(headers or {})})


# -- bodies -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", ""])
def test_an_image_request_that_is_not_json_is_a_415_naming_json(server, content_type):
    answer = post(server, json.dumps(GOOD).encode(), content_type=content_type)
    assert answer[0] == 415, answer[1]
    error = error_of(answer)
    assert error["code"] == "unsupported_media_type" and "application/json" in error["message"], error


def test_bodies_that_are_not_utf8_or_empty_are_400s_with_a_code(server):
    for path in (IMAGES, "/v1/videos"):
        answer = post(server, b'{"prompt": "caf\xe9"}', path=path)
        assert answer[0] == 400 and error_of(answer)["code"] == "invalid_encoding", (path, answer[1])
    answer = post(server, b"")
    assert answer[0] == 400 and error_of(answer)["message"].startswith("the request body is empty")


@pytest.mark.parametrize("path,extra", [(IMAGES, {}), ("/v1/videos", {"model": "vid"})])
@pytest.mark.parametrize("prompt", ["   ", "\n\t "])
def test_a_blank_prompt_is_refused(server, path, extra, prompt):
    answer = post(server, {**GOOD, **extra, "prompt": prompt}, path=path)
    assert answer[0] == 400 and error_of(answer)["param"] == "prompt", answer[1]
    assert "whitespace" in error_of(answer)["message"]


@pytest.mark.parametrize("field,value", [("stream", True), ("partial_images", 2), ("background", "transparent")])
def test_options_that_would_change_the_answer_are_refused(server, field, value):
    answer = post(server, {**GOOD, field: value})
    assert answer[0] == 400, answer[1]
    error = error_of(answer)
    assert error["param"] == field and error["code"] == "unsupported", error
    if field == "stream":
        assert "streaming is not supported" in error["message"] and "/v1/progress/" in error["message"]


def test_a_pag_layer_past_the_dit_is_refused_from_the_config_alone(server):
    """The model here has no pipeline (its weights live in worker processes or Ray replicas): the block count
    comes from its config."""
    answer = post(server, {**GOOD, "pag_scale": 2.0, "pag_layer": 8})
    assert answer[0] == 400 and error_of(answer)["param"] == "pag_layer", answer[1]


# -- who may ask --------------------------------------------------------------------------------------------------------

def test_cross_site_requests_and_foreign_hosts_are_403(server):
    form = b"prompt=x&model=img"
    for origin in ("http://evil.example", "null", "http://127.0.0.1:1"):
        answer = post(server, form, content_type="application/x-www-form-urlencoded", headers={"Origin": origin},
                      path="/v1/videos")
        assert answer[0] == 403 and error_of(answer)["code"] == "cross_origin", (origin, answer[1])
    for path in ("/healthz", IMAGES):  # a rebound name: refused, so no URL is built from it
        answer = request("GET" if path == "/healthz" else "POST", server + path, key=KEY, body=None if
                         path == "/healthz" else GOOD, headers={"Host": "evil.example:" + server.rsplit(":", 1)[1]})
        assert answer[0] == 403 and error_of(answer)["code"] == "invalid_host", answer[1]

    # The server's own page (its origin, under any loopback name), and an allowed origin, get through the guard.
    port = server.rsplit(":", 1)[1]
    # Another port too: an SSH tunnel or a port forward reaches the server under the client's own port.
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "localhost:9000", "[::1]"):
        answer = post(server, {**GOOD, "size": "abc"}, headers={"Host": host, "Origin": f"http://{host}"})
        assert answer[0] == 400 and error_of(answer)["param"] == "size", (host, answer[1])
    answer = post(server, {**GOOD, "size": "abc"}, headers={"Origin": "https://sana.example.com"})
    assert answer[0] == 400, answer[1]


def test_401_says_bearer_and_429_and_503_say_when_to_retry(server):
    answer = request("POST", server + IMAGES, body=GOOD)
    assert answer[0] == 401 and answer[2]["www-authenticate"] == "Bearer"

    state = make_state(max_queue=1)
    with app_server(state) as base:
        from sana.serving.scheduler import Job

        state.scheduler.submit(Job(model="img", key=("x",), request=None, images=1))  # the queue is full
        answer = post(base, GOOD)
        assert answer[0] == 429 and int(answer[2]["retry-after"]) > 0, answer
    with app_server(make_state(runner=Idle(alive=0, restarting=1))) as base:
        answer = post(base, GOOD)
        assert answer[0] == 503 and error_of(answer)["code"] == "no_workers", answer[1]
        assert int(answer[2]["retry-after"]) > 0
        health = request("GET", base + "/healthz")
        assert health[0] == 503


def test_models_retrieve(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)
    assert client.models.retrieve("img").id == "img"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("dall-e-3")
    answer = request("GET", server + "/v1/models/dall-e-3", key=KEY)
    assert answer[0] == 404 and error_of(answer)["code"] == "model_not_found"


# -- clips ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields,param,limit", [
    ({"num_frames": 1024}, "num_frames", "1024"),  # snapped up to 1025 (4k+1)
    ({"seconds": 63, "fps": 64}, "seconds", "1024"),  # 4033 frames
])
def test_the_frame_cap_holds_after_seconds_and_snapping(fields, param, limit):
    from sana.serving.clips import build_clip_job

    body = VideoGenerationRequest(prompt="x", model="vid", size="128x128", **fields)
    with pytest.raises(ApiError) as refused:
        build_clip_job({"vid": video_model()}, body, None)
    assert refused.value.status == 400 and refused.value.param == param, refused.value.message
    assert limit in refused.value.message


def _png_header(width: int, height: int) -> bytes:
    """A PNG's signature, header and an empty data chunk: enough for Pillow to open it and read its size."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9000, 20000])  # past the server's cap; past Pillow's decompression-bomb cap
def test_a_first_frame_too_large_says_so_with_the_limit(side):
    from sana.serving.clips import Upload, first_frame

    with pytest.raises(ApiError) as refused:
        first_frame(Upload(filename="big.png", data=_png_header(side, side)))
    assert refused.value.code == "image_too_large" and "8192x8192" in refused.value.message, refused.value.message


def test_a_clips_record_has_the_jobs_memory_plan(monkeypatch, tmp_path):
    import torch

    import sana.outputs
    from sana.serving.clips import build_clip_job, run_clip

    model = video_model()
    job = build_clip_job({"vid": model}, VideoGenerationRequest(prompt="x", model="vid", size="64x32",
                                                                num_frames=9), None)
    job.context["path"] = tmp_path / "clip.mp4"
    result = SimpleNamespace(generated_size=(64, 32), memory={"clip": "clip 17 frames at 128x128"}, frames=9,
                             timings={}, videos=[torch.zeros(9, 32, 64, 3, dtype=torch.uint8)])
    model.pipeline.generate = lambda request, events: result
    saved = {}
    monkeypatch.setattr(sana.outputs, "save_video", lambda frames, path, record, **_: saved.setdefault("r", record))
    run_clip(model, job, SimpleNamespace(on_phase=lambda name: None))
    assert saved["r"].extra["memory"]["clip"] == "clip 9 frames at 64x32"

    model.plan_for = None  # no planner: nothing said about memory
    job = build_clip_job({"vid": model}, VideoGenerationRequest(prompt="x", model="vid", size="64x32",
                                                                num_frames=9), None)
    job.context["path"] = tmp_path / "clip.mp4"
    saved.clear()
    run_clip(model, job, SimpleNamespace(on_phase=lambda name: None))
    assert "memory" not in saved["r"].extra


def test_a_served_loras_record_names_it_not_the_servers_file(tmp_path):
    from sana.serving.loras import AllowedLora

    entry = AllowedLora(name="style", path=tmp_path / "secret" / "style.safetensors", scale=1.0, sha256="ab" * 32)
    record = entry.record(0.8)
    assert record["path"] == record["name"] == "style" and record["sha256"] == "ab" * 32 and record["scale"] == 0.8
    assert str(tmp_path) not in json.dumps(record)


def test_the_start_up_line_of_a_server_on_every_interface_is_a_usable_url():
    import socket

    from sana_cli.serve import _listening

    line = _listening("0.0.0.0", 8123)
    assert "0.0.0.0" not in line and "http://127.0.0.1:8123" in line and "all interfaces" in line
    assert f"http://{socket.gethostname()}:8123" in line
    assert _listening("::", 8123).startswith("http://[::1]:8123")
    assert _listening("127.0.0.1", 8123) == "http://127.0.0.1:8123"



def test_allow_origin_takes_origins_only():
    from sana.errors import UsageError
    from sana_cli.serve import _origins

    assert _origins(["https://Sana.example.com/", "http://10.0.0.2:8000"]) == {"https://sana.example.com",
                                                                              "http://10.0.0.2:8000"}
    for bad in ("sana.example.com", "https://sana.example.com/page", "ftp://x"):
        with pytest.raises(UsageError):
            _origins([bad])
