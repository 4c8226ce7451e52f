"""`sana serve --ray`: a Ray head started here (small object store, no dashboard), `sana serve --ray --replicas 2
--device cpu --model nano` joining it through RAY_ADDRESS, and the official OpenAI client: images of the requested
sizes, the pixels of the pipeline, Ray's batches in /metrics, the same errors and API key. Skipped without Ray
Serve (`pip install ".[ray]"`)."""

from __future__ import annotations

import base64
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli_helpers import assert_one_line_error, run_sana
from tests.serve_helpers import error_of, request, running_server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

KEY = "ray-key-123"
CAPTION = "a large red circle in the center on a white background"
SIZES = ("256x256", "256x192")
STEPS = 3


def _ray():
    try:
        import ray
        import ray.serve  # noqa: F401
    except ImportError:
        pytest.skip('Ray Serve is not installed (pip install ".[ray]")')
    return ray


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ray = _ray()
    ray.init(num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, logging_level="ERROR",
             log_to_driver=False)
    try:
        address = ray.get_runtime_context().gcs_address
        args = ["--model", "nano", "--ray", "--replicas", "2", "--device", "cpu", "--api-key", KEY,
                "--max-batch", "4", "--batch-window-ms", "300"]
        with running_server(args, tmp_path_factory.mktemp("serve") / "server.log",
                            env={"RAY_ADDRESS": address}) as base:
            yield base
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


@pytest.mark.slow  # the Ray head, the server and two replicas start: about a minute here
def test_openai_client_gets_images_from_two_replicas(client, server):
    from sana.hub import resolve_model
    from sana.outputs import GenerationRecord
    from sana.pipelines.image import ImagePipeline, ImageRequest

    # 1. Eight concurrent requests of two sizes: every one answered at its size, Ray's batches larger than one.
    def generate(index: int):
        size = SIZES[index % 2]
        answer = client.images.generate(model="nano", prompt=CAPTION, size=size, response_format="b64_json",
                                        extra_body={"seed": 5 + index, "num_inference_steps": STEPS})
        return size, _decode(answer.data[0].b64_json)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(generate, range(8)))
    assert [f"{image.width}x{image.height}" for _, image in answers] == [size for size, _ in answers]
    health = json.loads(request("GET", server + "/healthz")[1])
    assert health["status"] == "ok" and health["models"] == ["nano"]
    forwards = sum(worker["batches"] for worker in health["workers"])
    metrics = request("GET", server + "/metrics", key=KEY)[1].decode()
    assert int(re.search(r"^sana_batch_size_count (\d+)$", metrics, re.M).group(1)) == forwards
    assert 2 <= forwards < 8, health["workers"]  # two sizes never share a forward; some requests did
    assert all(re.fullmatch(r"\S+ \(cpu, .+\)", worker["device"]) for worker in health["workers"])

    # 2. The record `sana gen` writes, and the pipeline's pixels (a batched image is within 2 levels of it alone).
    size, image = answers[0]
    record = GenerationRecord.from_json(image.info["sana"])
    assert record.model == "nano" and record.seed == 5 and record.steps == STEPS and record.extra["served"] is True
    pipe = ImagePipeline.from_pretrained(resolve_model("nano").path, dtype=torch.float32, device="cpu")
    alone = pipe.generate(ImageRequest(prompt=CAPTION, seeds=[5], width=256, height=256, steps=STEPS,
                                       guidance=record.guidance, sampler=record.sampler, flow_shift=record.flow_shift,
                                       pag=record.pag, pag_layers=tuple(record.pag_layers) or (8,)))
    difference = np.abs(np.asarray(alone.images[0], np.int16) - np.asarray(image.convert("RGB"), np.int16))
    assert difference.max() <= 2


@pytest.mark.slow
def test_the_same_errors_and_api_key(client, server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server + "/v1", api_key="wrong", max_retries=0).images.generate(
            model="nano", prompt=CAPTION, size="256x256")
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="nano", prompt=CAPTION, size="100000x100000")
    assert caught.value.body["param"] == "size"
    for body, status, param in (({"prompt": CAPTION, "model": "nano", "n": 1000}, 400, "n"),
                                ({"prompt": CAPTION, "model": "elsewhere"}, 404, "model"),
                                ({"prompt": CAPTION, "pag_scale": 2.0, "pag_layer": 99}, 400, "pag_layer")):
        answer = request("POST", server + "/v1/images/generations", key=KEY, body=body, timeout=30)
        assert answer[0] == status and error_of(answer)["param"] == param, answer[1]
    assert request("GET", server + "/healthz")[0] == 200


def test_ray_flags_need_ray():
    result = run_sana("serve", "--model", "nano", "--replicas", "2")
    assert "--ray" in assert_one_line_error(result)


def test_forward_groups_follow_the_scheduler_rule():
    _ray()
    from sana.serving.replicas import forward_groups
    from sana.serving.scheduler import Job

    def job(key: str, images: int) -> Job:
        return Job(model="nano", key=(key,), request=None, images=images)

    jobs = [job("a", 1), job("b", 2), job("a", 2), job("a", 2), job("b", 1), job("a", 1)]
    groups = forward_groups(jobs, max_batch=4)
    assert [[jobs.index(j) for j in group] for group in groups] == [[0, 2, 5], [1, 4], [3]]
