"""`sana serve --gpus 2 --device cpu --model nano`: two worker processes behind the one queue (the test's stand-in
for two GPUs). Concurrent requests are all answered, both processes run batches, progress comes back from them,
the pixels are the pipeline's, and LoRAs from the allow-list are merged in the workers."""

from __future__ import annotations

import base64
import io
import json
import threading
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
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    lora = write_lora(folder / "style.safetensors")
    args = ["--model", "nano", "--gpus", "2", "--device", "cpu", "--batch-window-ms", "0", "--lora", f"style={lora}"]
    with running_server(args, folder / "server.log") as base:
        yield base


def generate(server: str, size: str, **body) -> Image.Image:
    answer = request("POST", server + "/v1/images/generations",
                     body={"prompt": CAPTION, "size": size, "num_inference_steps": 3, "seed": 21, **body})
    assert answer[0] == 200, answer[1]
    image = Image.open(io.BytesIO(base64.b64decode(json.loads(answer[1])["data"][0]["b64_json"])))
    image.load()
    return image


@pytest.mark.slow
def test_two_worker_processes_answer_concurrent_requests(server):
    from sana.hub import resolve_model
    from sana.outputs import GenerationRecord
    from sana.pipelines.image import ImagePipeline, ImageRequest

    with ThreadPoolExecutor(len(SIZES) * 2) as pool:
        images = list(pool.map(lambda size: generate(server, size), SIZES * 2))
    assert [f"{i.width}x{i.height}" for i in images] == list(SIZES * 2)
    for first, again in zip(images[: len(SIZES)], images[len(SIZES):]):  # whichever process drew it
        assert np.array_equal(np.asarray(first), np.asarray(again))
    workers = json.loads(request("GET", server + "/healthz")[1])["workers"]
    assert len(workers) == 2 and len(SIZES) <= sum(w["batches"] for w in workers) <= 2 * len(SIZES)
    assert all(w["batches"] >= 1 for w in workers), workers

    # The pixels of the pipeline run here with the record's settings.
    record = GenerationRecord.from_json(images[0].info["sana"])
    pipe = ImagePipeline.from_pretrained(resolve_model("nano").path, dtype=torch.float32, device="cpu")
    alone = pipe.generate(ImageRequest(prompt=CAPTION, seeds=[21], width=256, height=256, steps=3,
                                       guidance=record.guidance, sampler=record.sampler, flow_shift=record.flow_shift,
                                       pag=record.pag, pag_layers=tuple(record.pag_layers) or (8,)))
    difference = np.abs(np.asarray(alone.images[0], np.int16) - np.asarray(images[0].convert("RGB"), np.int16))
    assert difference.max() <= 1


def test_progress_and_loras_cross_the_process_boundary(server):
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
    styled = np.asarray(generate(server, "256x256", lora="style", progress_id="gpus-progress-1"))
    assert done.wait(60)
    assert [e["step"] for e in events if "step" in e] == [1, 2, 3]
    base = np.asarray(generate(server, "256x256"))
    assert np.abs(styled.astype(int) - base).mean() > 1
    answer = request("POST", server + "/v1/images/generations", body={"prompt": "x", "lora": "other"})
    assert answer[0] == 400 and error_of(answer)["param"] == "lora"


def test_gpus_without_gpus_or_with_clip_models_is_one_line():
    port = ("--port", str(free_port()))  # the server binds its port first: the default may be someone else's
    if not torch.cuda.is_available():
        assert "CUDA device" in assert_one_line_error(run_sana("serve", "-m", "nano", "--gpus", "2", *port),
                                                       after_progress=True)
    message = assert_one_line_error(run_sana("serve", "-m", "nano", "--gpus", "2", "--device", "cuda:1", *port),
                                    after_progress=True)
    assert "--device auto, cuda or cpu" in message
