"""`sana gen --server URL` against `sana serve --model nano` (one server for the module, with a LoRA on its
allow-list): the files written are the ones `sana gen` writes (names, pixels, record), without importing torch;
`--force` rules; LoRAs named from the server's list, merged and taken out exactly; bad flags refused before any
request."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli_helpers import assert_one_line_error, run_sana
from tests.serve_helpers import error_of, request, running_server
from tests.test_cli_habits import heavy_imports

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

KEY = "client-key-123"
CAPTION = "a large blue square on the left on a white background"
TINY = ("--steps", "3", "--res", "256x192")
LORA_SCALE = 0.8
# Modules the test LoRA changes (diffusers names of the nano DiT's linears): fused q/k/v slices and plain ones.
LORA_TARGETS = {"transformer_blocks.{}.attn1.to_k": (192, 192), "transformer_blocks.{}.attn1.to_out.0": (192, 192),
                "transformer_blocks.{}.attn2.to_q": (192, 192)}


def write_lora(path, *, rank: int = 4, blocks=(0, 3, 7), seed: int = 0, module_format=None):
    """A diffusers-format LoRA file for the nano DiT: random non-zero A and B (no adapter metadata: alpha = r)."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for block in blocks:
        for template, (out_features, in_features) in LORA_TARGETS.items():
            module = (module_format or template).format(block)
            tensors[f"transformer.{module}.lora_A.weight"] = 0.3 * torch.randn(rank, in_features, generator=gen)
            tensors[f"transformer.{module}.lora_B.weight"] = 0.3 * torch.randn(out_features, rank, generator=gen)
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    return write_lora(tmp_path_factory.mktemp("lora") / "style.safetensors")


@pytest.fixture(scope="module")
def server(tmp_path_factory, lora):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    args = ["--model", "nano", "--api-key", KEY, "--lora", f"style={lora}:{LORA_SCALE}", "--batch-window-ms", "100"]
    with running_server(args, log) as base:
        yield base


def gen_remote(server: str, *args: str, cwd, profiled: bool = False):
    env = {"PYTHONPROFILEIMPORTTIME": "1"} if profiled else {}
    return run_sana("gen", *args, "--server", server, "--api-key", KEY, cwd=cwd, env=env)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), np.int16)


def generate(server: str, **body) -> Image.Image:
    answer = request("POST", server + "/v1/images/generations", key=KEY,
                     body={"prompt": CAPTION, "size": "256x192", "num_inference_steps": 3, "seed": 11, **body})
    assert answer[0] == 200, answer[1]
    image = Image.open(io.BytesIO(base64.b64decode(json.loads(answer[1])["data"][0]["b64_json"])))
    image.load()
    return image


# -- sana gen --server ----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_gen_with_a_server_writes_what_gen_writes_without_torch(server, tmp_path):
    from sana.outputs import read_metadata

    remote, local = tmp_path / "remote", tmp_path / "local"
    remote.mkdir()
    local.mkdir()
    args = (CAPTION, "-m", "nano", "--seed", "7", "--num", "2", *TINY)
    result = gen_remote(server, *args, cwd=remote, profiled=True)
    assert result.returncode == 0, result.stderr
    assert heavy_imports(result.stderr) == []
    result = run_sana("gen", *args, cwd=local)
    assert result.returncode == 0, result.stderr

    names = sorted(p.name for p in remote.iterdir())
    from sana.outputs.naming import prompt_stem

    assert names == sorted(p.name for p in local.iterdir()) == [
        f"{prompt_stem(CAPTION)}-7.png", f"{prompt_stem(CAPTION)}-8.png"]
    for name in names:
        assert np.abs(pixels(remote / name) - pixels(local / name)).max() <= 1, name
        served, made = read_metadata(remote / name), read_metadata(local / name)
        fields = ("prompt", "negative_prompt", "model", "family", "seed", "steps", "guidance", "sampler", "flow_shift",
                  "width", "height", "loras")
        assert [getattr(served, f) for f in fields] == [getattr(made, f) for f in fields]
        assert served.extra["served"] is True and served.extra["images_in_batch"] == 2

    # An existing file is refused before any request (nothing changes); --force writes it again.
    before = (remote / names[0]).read_bytes()
    result = gen_remote(server, *args, cwd=remote, profiled=True)
    assert "exists" in assert_one_line_error(result, after_progress=True)
    assert heavy_imports(result.stderr) == [] and (remote / names[0]).read_bytes() == before
    result = gen_remote(server, *args, "--force", cwd=remote)
    assert result.returncode == 0, result.stderr
    assert np.abs(pixels(remote / names[0]) - pixels(local / names[0])).max() <= 1

    # -o with a suffix: that format, the record inside.
    result = gen_remote(server, CAPTION, "-m", "nano", "--seed", "3", *TINY, "-o", "one.webp", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "one.webp").format == "WEBP" and read_metadata(tmp_path / "one.webp").seed == 3


@pytest.mark.slow
def test_lora_by_name_gives_what_gen_gives_with_the_file(server, lora, tmp_path):
    from sana.outputs import file_sha256, read_metadata

    result = gen_remote(server, CAPTION, "-m", "nano", "--seed", "5", *TINY, "--lora", "style", "-o", "remote.png",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = run_sana("gen", CAPTION, "-m", "nano", "--seed", "5", *TINY, "--lora", f"{lora}:{LORA_SCALE}",
                      "-o", "local.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert np.abs(pixels(tmp_path / "remote.png") - pixels(tmp_path / "local.png")).max() <= 1
    (entry,) = read_metadata(tmp_path / "remote.png").loras
    assert (entry["name"], entry["scale"], entry["sha256"]) == ("style", LORA_SCALE, file_sha256(lora))
    assert entry["path"] == "style" and str(lora.parent) not in (tmp_path / "remote.png").read_bytes().decode("latin-1")


def test_a_lora_is_merged_for_its_batch_and_taken_out_exactly(server):
    base = np.asarray(generate(server))
    styled = np.asarray(generate(server, lora="style"))
    weaker = np.asarray(generate(server, lora="style", lora_scale=0.2))
    after = np.asarray(generate(server))
    assert np.array_equal(base, after)  # the base weights came back bit for bit
    assert np.abs(styled.astype(int) - base).mean() > 1 and not np.array_equal(styled, weaker)


def test_unknown_lora_wrong_key_and_refusals_are_one_line(server, tmp_path):
    answer = request("POST", server + "/v1/images/generations", key=KEY, body={"prompt": "x", "lora": "other"})
    assert answer[0] == 400 and error_of(answer)["param"] == "lora"
    answer = request("POST", server + "/v1/images/generations", key=KEY, body={"prompt": "x", "lora_scale": 0.5})
    assert answer[0] == 400 and error_of(answer)["param"] == "lora_scale"
    message = assert_one_line_error(gen_remote(server, "x", "--lora", "other", cwd=tmp_path), after_progress=True)
    assert "not on this server's list" in message and "style" in message
    result = run_sana("gen", "x", "--server", server, "--api-key", "wrong", cwd=tmp_path)
    assert "API key" in assert_one_line_error(result, after_progress=True)
    result = run_sana("gen", "x", "--server", server, cwd=tmp_path, env={"SANA_API_KEY": ""})
    message = assert_one_line_error(result, after_progress=True)
    assert "needs an API key" in message and "--api-key" in message and "SANA_API_KEY" in message, message
    assert "4x its native size" in assert_one_line_error(gen_remote(server, "x", "--res", "2048", cwd=tmp_path),
                                                           after_progress=True)
    assert not list(tmp_path.glob("*.png"))


BAD_FLAGS = {
    "size": (("--res", "abc"), "size 'abc'"),
    "sampler": (("--sampler", "ddim"), "sampler 'ddim'"),
    "device": (("--device", "cuda"), "--device configures a local run"),
    "fp8": (("--fp8",), "--fp8 configures a local run"),
    "dry-run": (("--dry-run",), "--dry-run configures a local run"),
    "server-url": (("--server", "ftp://host"), "not an http(s) URL"),
    "unreachable": ((), "cannot reach the server"),
}


@pytest.mark.parametrize("args,expected", BAD_FLAGS.values(), ids=BAD_FLAGS.keys())
def test_bad_flags_are_refused_before_torch(args, expected, tmp_path):
    """Against a port nobody listens on: every mistake is named before any request would matter, without torch."""
    server = f"http://127.0.0.1:{_closed_port()}"
    result = run_sana("gen", "x", "-m", "nano", "--server", server, *args, cwd=tmp_path,
                      env={"PYTHONPROFILEIMPORTTIME": "1"})
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("import time:")]
    assert result.returncode != 0 and expected in lines[-1], lines
    assert heavy_imports(result.stderr) == []


def _closed_port() -> int:
    from tests.serve_helpers import free_port

    return free_port()


# -- the allow-list -----------------------------------------------------------------------------------------------

def _nano_transformer_dir():
    from sana.hub import resolve_model

    return resolve_model("nano").path / "transformer"


def test_lora_switch_matches_the_load_time_merge_and_restores_exactly(lora):
    from sana.loading import load_transformer
    from sana.outputs import file_sha256
    from sana.serving.loras import AllowedLora, LoraSwitch

    # In the file's dtype (fp16): a load-time merge rounds to it, as the switch rounds to the parameters' dtype.
    folder = _nano_transformer_dir()
    base = load_transformer(folder, dtype=torch.float16)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    merged = load_transformer(folder, dtype=torch.float16, loras=[(lora, LORA_SCALE)]).state_dict()
    switch = LoraSwitch(base, {"style": AllowedLora("style", lora, LORA_SCALE, file_sha256(lora))})
    switch.check()
    for scale in (0.3, None):  # a switch between scales restores first
        switch.use("style", scale)
    changed = [k for k in original if not torch.equal(original[k], merged[k])]
    assert any(".attn.qkv." in k for k in changed) and any(".cross_attn.q." in k for k in changed)
    for key, value in base.state_dict().items():
        assert torch.equal(value, merged[key]), key
    switch.use(None)
    for key, value in base.state_dict().items():
        assert torch.equal(value, original[key]), key


def test_serve_refuses_loras_it_cannot_serve(tmp_path):
    from sana.errors import SanaError
    from sana.loading import load_transformer
    from sana.outputs import file_sha256
    from sana.serving.loras import AllowedLora, LoraSwitch

    assert "NAME=PATH" in assert_one_line_error(run_sana("serve", "-m", "nano", "--lora", "style.safetensors"))
    assert "not found" in assert_one_line_error(run_sana("serve", "-m", "nano", "--lora", "a=missing.safetensors"))
    # The same for --refiner: a model not served, and one that is no world model.
    assert "is not a served --model" in assert_one_line_error(run_sana("serve", "-m", "nano", "--refiner", "wm"))
    assert "nano is not a SANA-WM model" in assert_one_line_error(run_sana("serve", "-m", "nano", "--refiner", "nano"))
    foreign = write_lora(tmp_path / "foreign.safetensors", module_format="transformer_blocks.{}.attn9.to_k")
    switch = LoraSwitch(load_transformer(_nano_transformer_dir()),
                        {"x": AllowedLora("x", foreign, 1.0, file_sha256(foreign))})
    with pytest.raises(SanaError, match="targets 'transformer_blocks.0.attn9.to_k'"):
        switch.check()
    # A LoRA our video fine-tuning made (its names fit the image DiT too) is refused by an image model.
    from sana.lora import BASE_CLASS_METADATA_KEY
    from sana.training.adapters import _add_metadata

    video_lora = write_lora(tmp_path / "video.safetensors")
    _add_metadata(video_lora, {BASE_CLASS_METADATA_KEY: "SanaVideoTransformer3DModel"})
    switch = LoraSwitch(load_transformer(_nano_transformer_dir()),
                        {"v": AllowedLora("v", video_lora, 1.0, file_sha256(video_lora))})
    with pytest.raises(SanaError, match="trained on a video model"):
        switch.check()


def test_the_page_is_open_but_its_progress_and_data_need_the_key(server):
    assert request("GET", server + "/")[0] == 200 and request("GET", server + "/static/app.js")[0] == 200
    assert json.loads(request("GET", server + "/healthz")[1])["api_key"] is True  # the page asks for the key
    assert request("GET", server + "/v1/progress/abcdefgh1234")[0] == 401
    assert request("GET", server + "/v1/videos")[0] == 401


def test_waits_for_a_server_that_is_warming_up(monkeypatch):
    """/healthz answering 503 "warming" is waited for (one notice), then its answer is used; other errors are not."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sana_cli import remote

    answers = [503, 503, 200]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the standard library's name)
            status = answers.pop(0) if answers else 404
            body = json.dumps({"status": "warming"} if status == 503 else {"status": "ok", "max_batch": 3}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setattr(remote.time, "sleep", lambda s: None)
    try:
        server = remote.Server(f"http://127.0.0.1:{httpd.server_address[1]}", None)
        assert server.health() == {"status": "ok", "max_batch": 3}
        with pytest.raises(remote.ServerRefused) as refused:
            server.health()  # 404: not a warming server, refused at once
        assert refused.value.status == 404
    finally:
        httpd.shutdown()
