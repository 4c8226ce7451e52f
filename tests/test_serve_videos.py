"""`POST /v1/videos` and its job routes against `sana serve` with a tiny SANA-Video and a tiny SANA-WM folder (and
nano), one server for the module: the official OpenAI client's multipart jobs, the MP4 with the record `sana
video` / `sana world` write and the frames the pipeline draws in-process, world jobs from actions and from a camera
file's JSON, listing / deleting / cancelling, `sana video --server`, and bad input as OpenAI-shaped 4xx errors."""

from __future__ import annotations

import base64
import json
import time

import numpy as np
import pytest
import torch

from tests.cli_helpers import run_sana
from tests.serve_helpers import error_of, request, running_server
from tests.test_cli_habits import heavy_imports
from tests.tiny_video_pipeline import first_frame

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

KEY = "video-key-123"
ACTIONS = "w-8,jw-8"  # 17 frames


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(video folder, world folder, first frame file)."""
    from tests.tiny_pipeline import build_tokenizer
    from tests.tiny_video_pipeline import build_pipeline as build_video
    from tests.tiny_world_pipeline import build_pipeline as build_world
    from tests.tiny_world_pipeline import build_refiner

    root = tmp_path_factory.mktemp("tiny-clips")
    tokenizer = build_tokenizer(root / "_tokenizer")
    build_video(root / "video", "wan", seed=3, tokenizer=tokenizer)
    build_world(root / "world", seed=2, tokenizer=tokenizer)
    build_refiner(root / "refiner", seed=4, tokenizer=tokenizer)  # served as the world model's stage 2
    image = root / "first.png"
    first_frame(130, 70).save(image)
    return root / "video", root / "world", image


@pytest.fixture(scope="module")
def server(tmp_path_factory, models):
    video, world, _ = models
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(["--model", "nano", "--model", str(video), "--model", str(world), "--api-key", KEY,
                         "--refiner", f"{world}={world.parent / 'refiner'}"], log) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0, timeout=120)


def call(server, method, path, body=None, **kwargs):
    status, data, headers = request(method, server + path, key=KEY, body=body, **kwargs)
    return status, (json.loads(data) if headers.get("content-type", "").startswith("application/json") else data)


def wait(server, video_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, job = call(server, "GET", f"/v1/videos/{video_id}")
        assert status == 200, job
        if job["status"] in ("completed", "failed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def download(server, video_id: str, tmp_path, name: str = "clip.mp4"):
    status, data = call(server, "GET", f"/v1/videos/{video_id}/content")
    assert status == 200
    path = tmp_path / name
    path.write_bytes(data)
    return path


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


# -- SANA-Video ---------------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the client marks the Videos API deprecated
def test_openai_client_text_to_video_gives_the_pipelines_frames(client, server, models, tmp_path):
    from sana.outputs import read_clip, read_metadata, save_video
    from sana.pipelines.video import VideoPipeline, VideoRequest

    video_dir, _, _ = models
    job = client.videos.create(prompt="A Dog running", model=str(video_dir), size="64x32", seconds="1",
                               extra_body={"fps": 8, "seed": 4, "num_inference_steps": 3, "negative_prompt": "static"})
    assert job.status == "queued" and job.size == "64x32"
    assert json.loads(job.model_dump_json())["num_frames"] == 9  # 1 s at 8 fps: 8 frames, snapped to 4k+1
    while job.status in ("queued", "in_progress"):
        time.sleep(0.2)
        job = client.videos.retrieve(job.id)
    assert job.status == "completed" and job.progress == 100, job.error
    clip = tmp_path / "served.mp4"
    clip.write_bytes(client.videos.download_content(job.id).read())

    record = read_metadata(clip)
    assert (record.family, record.prompt, record.seed, record.steps, record.frames, record.fps) == (
        "video", "A Dog running", 4, 3, 9, 8.0)
    assert record.extra["mode"] == "text-to-video" and record.extra["served"] is True
    assert record.negative_prompt == "static" and record.sampler == "flow-dpm"

    # The same request in-process, written by the same writer: the same frames.
    pipe = VideoPipeline.from_pretrained(video_dir, dtype=torch.float32, device="cpu")
    request_ = VideoRequest(prompt="A Dog running", seeds=[4], width=64, height=32, frames=9, steps=3,
                            guidance=record.guidance, sampler="flow-dpm", flow_shift=record.flow_shift,
                            negative_prompt="static", motion_score=30)
    local = save_video(pipe.generate(request_).videos[0].numpy(), tmp_path / "local.mp4", record, fps=8.0)
    served_frames, fps = read_clip(clip)
    assert served_frames.shape == (9, 32, 64, 3) and fps == 8.0
    assert np.array_equal(served_frames, read_clip(local)[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_image_to_video_with_an_uploaded_first_frame(client, server, models, tmp_path):
    from sana.outputs import file_sha256, read_metadata

    video_dir, _, image = models
    with open(image, "rb") as handle:
        job = client.videos.create(prompt="a bird flying", model=str(video_dir), size="64x32", input_reference=handle,
                                   extra_body={"num_frames": 5, "num_inference_steps": 2, "seed": 9})
    job = wait(server, job.id)
    assert job["status"] == "completed", job
    record = read_metadata(download(server, job["id"], tmp_path))
    assert record.extra["mode"] == "image-to-video" and record.sampler == "flow-euler"  # the preset's i2v sampler
    assert (record.extra["image"], record.extra["image_sha256"]) == ("first.png", file_sha256(image))


def test_sana_video_with_a_server_writes_the_clip_here_without_torch(server, models, tmp_path):
    from sana.outputs import read_clip, read_metadata

    video_dir, _, _ = models
    args = ("video", "a dog runs", "-m", str(video_dir), "--res", "64x32", "--frames", "9", "--steps", "2",
            "--seed", "2", "--server", server, "--api-key", KEY)
    result = run_sana(*args, cwd=tmp_path, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr
    assert heavy_imports(result.stderr) == []
    clip = tmp_path / "a-dog-runs-2.mp4"  # the name `sana video` gives
    assert read_clip(clip)[0].shape == (9, 32, 64, 3) and read_metadata(clip).seed == 2
    result = run_sana(*args, cwd=tmp_path)
    assert result.returncode != 0 and "exists" in result.stderr


# -- SANA-WM ------------------------------------------------------------------------------------------------------

def test_world_jobs_from_actions_and_from_a_camera_files_json(server, models, tmp_path):
    from sana.outputs import read_clip, read_metadata

    _, world_dir, image = models
    common = {"prompt": "A Cat walking", "model": str(world_dir), "size": "96x64", "input_reference": data_url(image),
              "num_inference_steps": 2, "seed": 5, "guidance_scale": 4.0}
    status, job = call(server, "POST", "/v1/videos", {**common, "actions": ACTIONS, "fov": 60})
    assert status == 200, job
    job = wait(server, job["id"])
    assert job["status"] == "completed" and job["num_frames"] == 17, job
    first = download(server, job["id"], tmp_path, "actions.mp4")
    record = read_metadata(first)
    assert (record.family, record.frames, record.fps, record.sampler) == ("wm", 17, 16.0, "flow-euler")
    assert (record.extra["camera"], record.extra["camera_kind"]) == (ACTIONS, "actions")
    status, camera = call(server, "GET", f"/v1/videos/{job['id']}/content?variant=camera")
    assert status == 200 and len(camera["frames"]) == 17

    # The resolved path sent back as a camera file's JSON: the same poses, so the same clip.
    status, again = call(server, "POST", "/v1/videos", {**common, "camera": camera})
    assert status == 200, again
    again = wait(server, again["id"])
    assert again["status"] == "completed", again
    second = download(server, again["id"], tmp_path, "camera.mp4")
    assert read_metadata(second).extra["camera"] == "camera (request body)"
    assert np.array_equal(read_clip(first)[0], read_clip(second)[0])


@pytest.mark.slow
def test_a_world_job_asking_for_the_refiner_gets_sana_worlds_refined_clip(server, models, tmp_path):
    """"refine": true runs the stage 2 the server loaded: the clip `sana world --refiner` makes at that seed (one
    frame fewer), recorded as refined; without it the job is stage 1's."""
    from sana.outputs import read_clip, read_metadata
    from tests.cli_helpers import psnr

    _, world_dir, image = models
    refiner_dir = world_dir.parent / "refiner"
    body = {"prompt": "A Cat walking", "model": str(world_dir), "size": "96x64", "input_reference": data_url(image),
            "num_inference_steps": 2, "seed": 5, "guidance_scale": 4.0, "actions": ACTIONS, "fov": 60}
    status, job = call(server, "POST", "/v1/videos", {**body, "refine": True})
    assert status == 200 and job["num_frames"] == 16, job
    job = wait(server, job["id"])
    assert job["status"] == "completed", job
    served = download(server, job["id"], tmp_path, "refined.mp4")
    record = read_metadata(served)
    assert record.frames == 16 and record.extra["refiner"]["path"] == str(refiner_dir.resolve())

    local = tmp_path / "local.mp4"
    result = run_sana("world", "A Cat walking", "--image", str(image), "--actions", ACTIONS, "--fov", "60",
                      "--model", str(world_dir), "--refiner", str(refiner_dir), "--res", "96x64", "--steps", "2",
                      "--cfg", "4", "--seed", "5", "-o", str(local), "--device", "cpu", "--dtype", "fp32")
    assert result.returncode == 0, result.stderr
    ours, theirs = read_clip(served)[0], read_clip(local)[0]
    assert ours.shape == theirs.shape == (16, 64, 96, 3)
    assert min(psnr(a, b) for a, b in zip(ours, theirs)) >= 40


def test_refine_asked_of_a_model_without_a_loaded_refiner_is_a_400(models):
    from sana.registry import ClipDefaults
    from sana.serving.admission import ServedModel
    from sana.serving.clips import build_clip_job
    from sana.serving.schemas import ApiError, VideoGenerationRequest

    _, _, image = models
    defaults = ClipDefaults(steps=2, cfg=4.0, sampler="flow-euler", i2v_sampler="flow-euler", shift=3.0, frames=17,
                            fps=16.0, motion_score=None, width=96, height=64)
    world = ServedModel(name="wm", pipeline=None, family="wm", defaults=defaults, resolution=96, dtype="fp32",
                        device="cpu", created=0, plan_for=None)
    body = VideoGenerationRequest(prompt="x", model="wm", input_reference=data_url(image), actions=ACTIONS, fov=60,
                                  refine=True)
    with pytest.raises(ApiError) as refused:
        build_clip_job({"wm": world}, body, None)
    assert refused.value.status == 400 and "no refiner for wm" in str(refused.value.message)

    world.refiner = object()  # loaded: a one-frame clip still has nothing past the anchor for it to refine
    body = VideoGenerationRequest(prompt="x", model="wm", input_reference=data_url(image), actions=ACTIONS, fov=60,
                                  refine=True, num_frames=1)
    with pytest.raises(ApiError) as refused:
        build_clip_job({"wm": world}, body, None)
    assert refused.value.status == 400 and "the refiner needs at least 9 frames" in str(refused.value.message)


# -- the job routes ------------------------------------------------------------------------------------------------

def test_list_retrieve_delete_and_cancel(server, models):
    video_dir, _, _ = models
    body = {"prompt": "a slow clip", "model": str(video_dir), "size": "64x32", "num_frames": 9}
    ids = []
    for steps in (2, 60, 60):  # the long ones are still waiting or running when they are deleted
        status, job = call(server, "POST", "/v1/videos", {**body, "num_inference_steps": steps})
        assert status == 200 and job["status"] == "queued", job
        ids.append(job["id"])
    status, page = call(server, "GET", "/v1/videos?limit=2")
    assert status == 200 and [v["id"] for v in page["data"]] == ids[:0:-1] and page["has_more"]
    status, rest = call(server, "GET", f"/v1/videos?limit=100&order=asc&after={ids[0]}")
    assert [v["id"] for v in rest["data"]] == ids[1:] and not rest["has_more"]
    status, answer = call(server, "GET", f"/v1/videos/{ids[2]}/content")
    assert status == 409 and error_of((status, json.dumps(answer).encode(), {}))["code"] == "video_not_ready"

    for video_id in ids[1:]:
        status, deleted = call(server, "DELETE", f"/v1/videos/{video_id}")
        assert status == 200 and deleted == {"id": video_id, "object": "video.deleted", "deleted": True}
        assert call(server, "GET", f"/v1/videos/{video_id}")[0] == 404
    assert wait(server, ids[0])["status"] == "completed"
    _, health = call(server, "GET", "/healthz")
    deadline = time.monotonic() + 60
    while health["queue_depth"] and time.monotonic() < deadline:  # the cancelled jobs leave the queue
        time.sleep(0.2)
        _, health = call(server, "GET", "/healthz")
    assert health["queue_depth"] == 0


# -- bad input -----------------------------------------------------------------------------------------------------

def _bad_cases(video: str, world: str, image_url: str) -> dict:
    clip = {"prompt": "x", "model": video, "size": "64x32", "num_frames": 9, "num_inference_steps": 1}
    scene = {"prompt": "x", "model": world, "size": "96x64", "input_reference": image_url, "num_inference_steps": 1}
    return {
        "missing prompt": ({"model": video}, 400, "prompt"),
        "size abc": ({**clip, "size": "abc"}, 400, "size"),
        "size not 32": ({**clip, "size": "65x32"}, 400, "size"),
        "huge size": ({**clip, "size": "100000x100000"}, 400, "size"),
        "frames": ({**clip, "num_frames": 100000}, 400, "num_frames"),
        "seconds": ({**clip, "seconds": "-4"}, 400, "seconds"),
        "seconds and frames": ({**clip, "seconds": "1"}, 400, "seconds"),
        "world seconds and frames": ({**scene, "actions": ACTIONS, "fov": 60, "seconds": "1", "num_frames": 9}, 400,
                                     "seconds"),
        "world frames past a minute": ({**scene, "actions": "w-1000", "fov": 60, "num_frames": 1000}, 400,
                                       "num_frames"),
        "steps": ({**clip, "num_inference_steps": 10000}, 400, "num_inference_steps"),
        "image model": ({**clip, "model": "nano"}, 400, "model"),
        "unknown model": ({**clip, "model": "sora-2"}, 404, "model"),
        "sampler": ({**clip, "sampler": "scm"}, 400, "sampler"),
        "camera for video": ({**clip, "actions": ACTIONS}, 400, "actions"),
        "reference url": ({**clip, "reference_url": "http://example.com/a.png"}, 400, "reference_url"),
        "image url": ({**clip, "input_reference": "https://example.com/a.png"}, 400, "input_reference"),
        "not an image": ({**clip, "input_reference": base64.b64encode(b"not an image").decode()}, 400,
                         "input_reference"),
        "file id": ({**clip, "input_reference": {"file_id": "file-123"}}, 400, "input_reference"),
        "world without image": ({**scene, "input_reference": None, "actions": ACTIONS}, 400, "input_reference"),
        "world without camera": (scene, 400, "camera"),
        "world bad actions": ({**scene, "actions": "q-8"}, 400, "actions"),
        "world bad camera": ({**scene, "camera": {"frames": "nope"}}, 400, "camera"),
        "refine a video model": ({**clip, "refine": True}, 400, "refine"),
        "body not an object": ([1, 2], 400, None),
    }


def test_bad_clip_requests_are_openai_errors_and_the_server_keeps_serving(server, models):
    video, world, image = models
    for name, (body, status, param) in _bad_cases(str(video), str(world), data_url(image)).items():
        answer = request("POST", server + "/v1/videos", key=KEY, body=json.dumps(body).encode())
        assert answer[0] == status, (name, answer[1])
        assert error_of(answer)["param"] == param, (name, answer[1])
    assert request("POST", server + "/v1/videos", key=KEY, body=b"{nope")[0] == 400
    answer = request("POST", server + "/v1/videos", key=KEY, body=b"prompt=x", content_type="text/plain")
    assert answer[0] == 415 and error_of(answer)["code"] == "unsupported_media_type"
    answer = request("POST", server + "/v1/videos", key=KEY, body=b"x" * (30 * 2**20))
    assert answer[0] == 413
    assert request("POST", server + "/v1/videos", key="wrong", body={"prompt": "x"})[0] == 401
    assert request("GET", server + "/v1/videos/video_" + "x" * 24, key=KEY)[0] == 404
    answer = request("POST", server + "/v1/images/generations", key=KEY, body={"prompt": "x", "model": str(video)})
    assert answer[0] == 400 and "/v1/videos" in error_of(answer)["message"]
    assert request("GET", server + "/healthz")[0] == 200
