"""`sana world --refine`: SANA-WM's stage 2 (diffusers' LTX-2 refiner) on our stage-1 latents, on a tiny random
SANA-WM folder and a tiny random refiner: every frame against diffusers' two stages at the same seed, the record and
the replay, and the refiner's bad inputs as one line before torch is imported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sana.camera import resolve_camera
from tests.cli_helpers import assert_one_line_error, psnr, run_sana
from tests.tiny_video_pipeline import first_frame
from tests.tiny_world_pipeline import HEIGHT, WIDTH, build_pipeline, build_refiner

COMMON = ("--device", "cpu", "--dtype", "fp32")
TINY = ("--res", f"{WIDTH}x{HEIGHT}", "--steps", "3", "--cfg", "4", "--fov", "60")
ACTIONS = "w-8,jw-8,s-8"  # 25 frames: 4 latent frames, so the refiner's history and sink both take part
IMAGE_SIZE = (130, 70)


@pytest.fixture(autouse=True)
def one_thread_count(monkeypatch):
    """Frames are compared across processes: one thread count sums in one order."""
    monkeypatch.setenv("SANA_THREADS", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(diffusers' stage-1 pipeline, its folder, diffusers' refiner, its folder, the first frame's file)."""
    from tests.tiny_pipeline import build_tokenizer

    root = tmp_path_factory.mktemp("tiny-wm-refiner")
    tokenizer = build_tokenizer(root / "_tokenizer")
    pipe = build_pipeline(root / "wm", seed=2, tokenizer=tokenizer)
    refiner = build_refiner(root / "refiner", seed=4, tokenizer=tokenizer)
    image = root / "first.png"
    first_frame(*IMAGE_SIZE).save(image)
    return pipe, root / "wm", refiner, root / "refiner", image


def _frames_folder(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])


@pytest.mark.slow
def test_refined_frames_match_diffusers_two_stages_and_replay(tiny, tmp_path):
    pipe, model_dir, refiner, refiner_dir, image = tiny
    out = tmp_path / "out"
    result = run_sana("world", "A Cat walking", "--image", str(image), "--actions", ACTIONS, "--model",
                      str(model_dir), "--refiner", str(refiner_dir), *TINY, "--seed", "5", "--format", "png",
                      "-o", f"{out}/", *COMMON)
    assert result.returncode == 0, result.stderr
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    ours = _frames_folder(folder)
    assert ours.shape == (24, HEIGHT, WIDTH, 3)  # 25 frames less the refiner's sink frame

    # diffusers: stage 1 to latents, then the refiner (the clip's seed for its noise) decoding with stage 1's VAE.
    path = resolve_camera(actions=ACTIONS, image_size=IMAGE_SIZE, fov=60.0)
    latents = pipe(image=Image.open(image).convert("RGB"), prompt="A Cat walking", action=ACTIONS,
                   intrinsics=path.intrinsics[0].tolist(), height=HEIGHT, width=WIDTH, num_frames=25,
                   num_inference_steps=3, guidance_scale=4.0, generator=torch.Generator().manual_seed(5),
                   output_type="latent").frames
    refiner.vae = pipe.vae
    ref = refiner(latents, "A Cat walking", fps=16.0, generator=torch.Generator().manual_seed(5), output_type="np")
    ref = (np.asarray(ref) * 255).round().clip(0, 255).astype(np.uint8)
    assert ref.shape == ours.shape
    for index, (a, b) in enumerate(zip(ours, ref)):
        assert psnr(a, b) >= 45, f"frame {index}"
    # ... and the refiner did change them: stage 1's own decode of the same latents is another clip.
    with torch.no_grad():
        decoded = refiner._decode_latents(latents)[:, :, 1:]
    unrefined = refiner.video_processor.postprocess_video(decoded, output_type="np")
    unrefined = (np.asarray(unrefined[0]) * 255).round().clip(0, 255).astype(np.uint8)
    assert max(psnr(a, b) for a, b in zip(ours, unrefined)) < 30

    # The record says what ran; the camera file keeps the whole path (the clip shows its poses 1 to 24).
    meta = json.loads(run_sana("info", str(folder), "--json").stdout)
    assert meta["frames"] == 24 and meta["seed"] == 5
    assert meta["extra"]["refiner"]["path"] == str(refiner_dir.resolve())
    assert meta["extra"]["refiner"]["dropped_first_frames"] == 1 and meta["extra"]["refiner"]["seed"] == 5
    assert len(json.loads((out / f"{folder.name}.camera.json").read_text())["frames"]) == 25

    # --from replays the refined clip (its refiner included): the same frames.
    again = tmp_path / "again"
    result = run_sana("world", "--from", str(folder), "--format", "png", "-o", f"{again}/", *COMMON)
    assert result.returncode == 0, result.stderr
    (replayed,) = [p for p in again.iterdir() if p.is_dir()]
    assert np.array_equal(_frames_folder(replayed), ours)

    # --no-refine replays its stage 1 alone: the 25 frames stage 1 made, nothing refined.
    plan = run_sana("world", "--from", str(folder), "--no-refine", "--dry-run", "--json", *COMMON)
    assert plan.returncode == 0, plan.stderr
    (clip,) = json.loads(plan.stdout)["clips"]
    assert clip["frames"] == 25 and clip["refiner"] is None
    assert "contradict" in assert_one_line_error(run_sana("world", "--from", str(folder), "--no-refine",
                                                          "--refiner", str(refiner_dir), "--dry-run", *COMMON))


def test_refiner_bad_input_is_one_line_before_torch(tiny, tmp_path):
    import subprocess
    import sys

    _, model_dir, _, refiner_dir, image = tiny
    base = ("world", "a prompt", "--image", str(image), "--actions", "w-8", "--model", str(model_dir), *TINY,
            "-o", f"{tmp_path}/out/", *COMMON)
    cases = {("--refine",): "this model folder has no refiner/",
             ("--refiner", str(tmp_path / "missing")): "is not a folder",
             ("--refiner", str(model_dir)): "holds a SanaWMPipeline pipeline, not SANA-WM's refiner",
             ("--refiner", str(refiner_dir), "--frames", "1"): "the refiner needs at least 9 frames",
             ("--refiner", str(refiner_dir), "--frames", "1", "--dry-run"): "the refiner needs at least 9 frames"}
    for extra, words in cases.items():
        assert words in assert_one_line_error(run_sana(*base, *extra, cwd=tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == []

    script = ("import sys\nfrom sana_cli.app import app\n"
              "try:\n    app(sys.argv[1:], standalone_mode=False)\nexcept Exception as exc:\n"
              "    print(type(exc).__name__)\nprint('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script, *base, "--refiner", str(model_dir)], capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.split() == ["UsageError", "False"], result.stdout + result.stderr


def test_dry_run_names_the_refiner(tiny, tmp_path):
    _, model_dir, _, refiner_dir, image = tiny
    result = run_sana("world", "a street", "--image", str(image), "--actions", ACTIONS, "--model", str(model_dir),
                      "--refiner", str(refiner_dir), *TINY, "--dry-run", *COMMON, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"stage 2: the LTX-2 refiner in {refiner_dir.resolve()}" in result.stdout and "24 frames come out" in \
        result.stdout
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("free_gib, placement", [(40.0, "resident"), (0.8, "model offload"), (0.05, None)])
def test_the_refiner_is_placed_from_its_headers_before_loading(tiny, monkeypatch, free_gib, placement):
    """On a GPU: all of it on the device when weights x 1.15 fit in the free memory, else model offload when the
    largest module fits, else a one-line error before a weight is read (the tiny refiner's sizes stand in, scaled)."""
    import contextlib

    from sana.errors import SanaError
    from sana.pipelines import world_refiner

    refiner_dir = tiny[3]
    sizes = world_refiner.component_bytes(refiner_dir, 4)
    scale = 2**30 / sum(sizes.values())  # the tiny refiner as if it were 1 GiB (its DiT ~0.6 GiB)
    monkeypatch.setattr(world_refiner, "component_bytes",
                        lambda folder, size: {k: int(v * scale) for k, v in sizes.items()})
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(free_gib * 2**30), 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    loads = []

    class Pipe:
        def enable_model_cpu_offload(self, device):
            loads.append(("offload", str(device)))

    monkeypatch.setattr(world_refiner, "_from_pretrained", lambda folder, dtype, **kw: loads.append(kw) or Pipe())
    largest = max(sizes.values()) * scale * world_refiner.ACTIVATION_HEADROOM / 2**30
    if placement is None:
        with pytest.raises(SanaError, match="needs about"):
            world_refiner.WorldRefiner.load(refiner_dir, dtype=torch.float32, device="cuda")
        assert loads == [] and free_gib < largest
        return
    loaded = world_refiner.WorldRefiner.load(refiner_dir, dtype=torch.float32, device="cuda")
    assert loaded.placement == placement
    assert loads == ([{"device_map": "cuda"}] if placement == "resident" else [{}, ("offload", "cuda")])


def test_a_refiner_folder_without_model_index_is_named(tmp_path):
    from sana.errors import UsageError
    from sana.pipelines.world_refiner import refiner_folder

    model = tmp_path / "wm"
    (model / "refiner" / "transformer").mkdir(parents=True)  # NVlabs' layout: component folders, no index
    with pytest.raises(UsageError, match="refiner has no model_index.json"):
        refiner_folder(None, model)
    assert refiner_folder(None, tmp_path / "elsewhere") is None
