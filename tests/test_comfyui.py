"""The node pack in a real ComfyUI (0.3.64, from the source tarball beside the checkout): `sana comfy install` puts
it in a scratch ComfyUI, `python main.py --cpu` serves it (one server for the module), and the HTTP API does what
a user's browser does: /object_info lists our nodes, the API-format text-to-image workflow on the nano model
gives `sana gen`'s image (PSNR >= 45 dB) that draws the prompt, Cancel stops a run, and bad graphs get
ComfyUI's `node_errors` or a one-line node error while the server keeps running.

ComfyUI runs in its own environment (.venv/comfyui, built by scripts/comfyui_env.sh, which scripts/test.sh runs).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
import urllib.parse
from pathlib import Path

import pytest
from PIL import Image

from cli_helpers import psnr, run_sana
from serve_helpers import free_port, gen_in_background, request, running_process

REPO = Path(__file__).resolve().parents[1]
TARBALL = Path(os.environ.get("SANA_COMFYUI_TARBALL", REPO.parent / "shared" / "vendor" / "comfyui-a125cd84.tar.gz"))
COMFYUI_PYTHON = REPO / ".venv" / "comfyui" / "bin" / "python"
CAPTION = "a large red circle in the center on a white background"
SETTINGS = {"seed": 3, "steps": 8, "guidance": 3.0, "width": 256, "height": 256}
STARTUP_SECONDS = 240
RUN_SECONDS = 180


pytestmark = [
    pytest.mark.slow,  # ~25 s alone (ComfyUI's start is most of it), a minute on a busy machine
    pytest.mark.skipif(not TARBALL.is_file(),
                       reason=f"ComfyUI's source is not here ({TARBALL.name}, expected in shared/vendor/ beside the "
                              "checkout)"),
    pytest.mark.skipif(not COMFYUI_PYTHON.is_file(),
                       reason="the ComfyUI environment is not built: bash scripts/comfyui_env.sh (scripts/test.sh "
                              "runs it)"),
]


def _request(url: str, payload: dict | None = None) -> tuple[int, bytes]:
    """GET, or POST of a JSON payload: (status, body)."""
    return request("POST" if payload is not None else "GET", url, body=payload, timeout=60)[:2]


def _json(url: str, payload: dict | None = None) -> tuple[int, dict]:
    status, body = _request(url, payload)
    return status, json.loads(body)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """`sana gen` of CAPTION with SETTINGS on the nano model, started now (it runs while ComfyUI starts)."""
    out = tmp_path_factory.mktemp("gen") / "gen.png"
    size = f"{SETTINGS['width']}x{SETTINGS['height']}"
    with gen_in_background([CAPTION, "--model", "nano", "--seed", str(SETTINGS["seed"]), "--steps",
                            str(SETTINGS["steps"]), "--cfg", str(SETTINGS["guidance"]), "--res", size,
                            "-o", str(out)]) as process:
        yield process, out


@pytest.fixture(scope="module")
def comfyui(tmp_path_factory, reference):
    """A scratch ComfyUI with our pack installed by `sana comfy install`, serving on a free local port; yields
    (base URL, the ComfyUI folder, the server's log)."""
    scratch = tmp_path_factory.mktemp("comfyui")
    with tarfile.open(TARBALL) as archive:
        archive.extractall(scratch, filter="data")
    root = scratch / "ComfyUI"
    installed = run_sana("comfy", "install", str(root))
    assert installed.returncode == 0, installed.stderr
    port, log_path = free_port(), scratch / "server.log"
    base = f"http://127.0.0.1:{port}"
    with running_process([str(COMFYUI_PYTHON), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port)],
                         log_path, base + "/system_stats", what="ComfyUI", cwd=root,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, startup_seconds=STARTUP_SECONDS):
        yield base, root, log_path


def _workflow(name: str) -> dict:
    folder = "api_workflows" if name.endswith(".api.json") else "example_workflows"
    return json.loads((REPO / "comfyui_sana" / folder / name).read_text())


def _nano_text_to_image() -> dict:
    """The API-format text-to-image workflow, on the nano model with SETTINGS."""
    graph = _workflow("text-to-image.api.json")
    graph["1"]["inputs"]["model"] = "nano"
    graph["2"]["inputs"].update(prompt=CAPTION, negative="")
    graph["3"]["inputs"].update(SETTINGS)
    return graph


def _run(base: str, graph: dict, **extra) -> tuple[str, dict]:
    """POST the graph, poll its history until it finishes; (prompt id, history entry)."""
    status, answer = _json(base + "/prompt", {"prompt": graph, **extra})
    assert status == 200 and answer["node_errors"] == {}, answer
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + RUN_SECONDS
    while time.monotonic() < deadline:
        _, history = _json(f"{base}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            return prompt_id, history[prompt_id]
        time.sleep(0.3)
    raise AssertionError(f"prompt {prompt_id} did not finish in {RUN_SECONDS} s")


def _messages(entry: dict) -> dict[str, dict]:
    return {kind: data for kind, data in entry["status"]["messages"]}


def test_object_info_lists_our_nodes_with_their_inputs_and_outputs(comfyui):
    base, _, _ = comfyui
    status, info = _json(base + "/object_info")
    assert status == 200
    ours = {name: entry for name, entry in info.items()
            if entry["python_module"].startswith("custom_nodes.comfyui_sana")}
    assert {entry["display_name"] for entry in ours.values()} == {
        "Sana Model Loader", "Sana Text Encode", "Sana Sampler", "Sana Decode", "Sana Generate", "Sana Sprint",
        "Sana LoRA", "Sana Save", "Sana Video", "Sana World"}
    sampler = ours["SanaEngineSampler"]
    assert list(sampler["input"]["required"]) == ["model", "conditioning", "seed", "steps", "guidance", "pag",
                                                  "sampler", "shift", "width", "height", "batch_size"]
    width = sampler["input"]["required"]["width"][1]  # 0: the model's native size
    assert (width["min"], width["default"], width["step"]) == (0, 0, 32) and sampler["output"] == ["LATENT"]
    assert ours["SanaEngineDecode"]["output"] == ["IMAGE", "SANA_INFO"]
    assert ours["SanaEngineSave"]["output_node"] is True and ours["SanaEngineSave"]["category"] == "sana"
    assert "nano" in ours["SanaEngineModelLoader"]["input"]["required"]["model"][0]


def test_text_to_image_workflow_gives_sana_gens_image(comfyui, reference):
    from sana.nano.adherence import check_image
    from sana.outputs import GenerationRecord

    base, _, _ = comfyui
    ui_workflow = _workflow("text-to-image.json")
    prompt_id, entry = _run(base, _nano_text_to_image(), extra_data={"extra_pnginfo": {"workflow": ui_workflow}})
    assert entry["status"]["status_str"] == "success", entry["status"]
    (saved,) = entry["outputs"]["5"]["images"]
    query = urllib.parse.urlencode({k: saved[k] for k in ("filename", "subfolder", "type")})
    status, data = _request(f"{base}/view?{query}")
    assert status == 200
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.size == (SETTINGS["width"], SETTINGS["height"])
    attributes = check_image(image.convert("RGB"), CAPTION).attributes()
    assert all(attributes.values()), attributes  # the nano shapes check: the prompt is drawn
    record = GenerationRecord.from_json(image.info["sana"])
    assert (record.prompt, record.model, record.seed, record.steps) == (CAPTION, "nano", 3, 8)
    assert json.loads(image.info["workflow"]) == ui_workflow and "SanaEngineSampler" in image.info["prompt"]

    process, out = reference
    _, stderr = process.communicate(timeout=RUN_SECONDS)
    assert process.returncode == 0, stderr
    assert psnr(image.convert("RGB"), Image.open(out).convert("RGB")) >= 45


def test_cancel_stops_the_denoise_loop(comfyui):
    base, _, _ = comfyui
    graph = _nano_text_to_image()
    graph["3"]["inputs"].update(steps=200, seed=11)
    status, answer = _json(base + "/prompt", {"prompt": graph})
    assert status == 200, answer
    prompt_id = answer["prompt_id"]
    deadline = time.monotonic() + RUN_SECONDS
    while not _json(base + "/queue")[1]["queue_running"]:  # running: Text Encode and the sampler's first steps
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(2.0)
    assert _request(base + "/interrupt", {})[0] == 200
    while True:
        _, history = _json(f"{base}/history/{prompt_id}")
        if prompt_id in history and history[prompt_id]["status"].get("completed") is not None:
            break
        assert time.monotonic() < deadline, "the interrupted run did not end"
        time.sleep(0.3)
    entry = history[prompt_id]
    assert "execution_interrupted" in _messages(entry) and "5" not in entry["outputs"]


def test_bad_graphs_get_node_errors_and_comfyui_keeps_running(comfyui):
    base, _, log_path = comfyui
    graph = _nano_text_to_image()
    graph["1"]["inputs"]["model"] = "no-such-model"
    graph["3"]["inputs"]["width"] = -32
    status, answer = _json(base + "/prompt", {"prompt": graph})
    assert status == 400 and answer["error"]["type"] == "prompt_outputs_failed_validation"
    (model_error,) = answer["node_errors"]["1"]["errors"]  # one line, on the model input
    assert model_error["details"].startswith("model - unknown model 'no-such-model'")
    assert [e["type"] for e in answer["node_errors"]["3"]["errors"]] == ["value_smaller_than_min"]

    # A graph that is valid but wrong when it runs: a one-line node error in the history.
    graph = _workflow("sprint.api.json")
    graph["1"]["inputs"]["model"] = "nano"
    _, entry = _run(base, graph)
    assert entry["status"]["status_str"] == "error"
    error = _messages(entry)["execution_error"]
    assert error["node_type"] == "SanaEngineSprint"
    assert error["exception_message"].strip() == "nano is a SANA image model; Sana Sprint takes a SANA-Sprint model"

    assert _request(base + "/system_stats")[0] == 200
    assert _json(base + "/object_info/SanaEngineDecode")[0] == 200
