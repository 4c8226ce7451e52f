"""`sana finetune` on tiny random SANA pipelines, on the CPU: data handling, training, resume, outputs, DDP/FSDP2."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli_helpers import assert_one_line_error, psnr, run_sana, sana_executable
from tests.tiny_pipeline import build_pipeline

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (240, 210, 40)}


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("base")
    build_pipeline(path)
    return path


def make_dataset(folder: Path, count: int = 8, size: tuple[int, int] = (32, 32)) -> Path:
    """Coloured squares on grey, captioned by colour; every other image in landscape for a second bucket."""
    folder.mkdir(parents=True, exist_ok=True)
    names = list(COLOURS)
    for i in range(count):
        name = names[i % len(names)]
        w, h = (size[0] * 2, size[1]) if i % 2 else size
        pixels = np.full((h, w, 3), 128, np.uint8)
        pixels[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = COLOURS[name]
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"a {name} square")
    return folder


def finetune_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["finetune", str(data), "--model", str(model), "--out", str(out), "--res", "32", "--device", "cpu",
            "--batch-size", "2", *extra]


def trained_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    step = sorted((out / "checkpoints").iterdir())[-1]
    return load_file(str(step / "weights.safetensors"))


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0 if atol == 0 else 1e-4, msg=key)


# -- data -------------------------------------------------------------------------------------------------

def test_scan_reports_bad_files_and_reads_metadata_jsonl(tmp_path):
    from sana.training.data import scan_folder

    data = make_dataset(tmp_path / "data", count=3)
    (data / "img00.txt").unlink()  # a missing caption
    (data / "notes.bin").write_bytes(b"\x00" * 10)  # not an image
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # cannot be identified
    (data / "broken.txt").write_text("broken")
    sub = data / "more"
    sub.mkdir()
    Image.new("RGB", (40, 20), (1, 2, 3)).save(sub / "x.jpg")
    (sub / "metadata.jsonl").write_text(json.dumps({"file_name": "x.jpg", "text": "a  wide\n picture"}) + "\n{bad\n")
    samples, report = scan_folder(data, trigger="sks")
    assert [s.path.name for s in samples] == ["img01.png", "img02.png", "x.jpg"]
    assert samples[-1].caption == "sks, a wide picture" and (samples[-1].width, samples[-1].height) == (40, 20)
    assert report.skipped["no caption"] == ["img00.png"]
    assert report.skipped["not an image"] == ["notes.bin"]
    assert report.skipped["unreadable image"] == ["broken.png"]
    assert len(report.skipped["unreadable metadata.jsonl line"]) == 1
    fixed, _ = scan_folder(data, caption="one caption")
    assert {s.caption for s in fixed} == {"one caption"} and len(fixed) == 4


def test_images_enlarged_a_lot_are_named_in_the_report(tmp_path):
    from sana.training.data import DataReport, Sample, note_upscaled

    report = DataReport(root=tmp_path)
    samples = [Sample(tmp_path / "big.png", "a", 512, 512), Sample(tmp_path / "small.png", "b", 100, 60),
               Sample(tmp_path / "edge.png", "c", 128, 128)]
    note_upscaled(samples, [(256, 256), (320, 192), (256, 256)], report)  # 3.2x, and exactly 2x (not named)
    assert report.notes == ["1 upscaled more than 2x to their training size, so they train blurry (small.png "
                            "100x60 -> 320x192); drop them or train at a lower --res"]
    assert report.lines()[-1] == report.notes[0]
    quiet = DataReport(root=tmp_path)
    note_upscaled(samples[:1], [(256, 256)], quiet)
    assert quiet.notes == []


def test_epoch_batches_are_full_single_bucket_and_seeded():
    from sana.training.data import epoch_batches

    groups = {(32, 32): [0, 1, 2, 3, 4], (64, 32): [5, 6]}
    batches = epoch_batches(groups, 4, seed=1, epoch=0)
    assert all(len(b) == 4 for b in batches)
    assert all(set(b) <= set(groups[(32, 32)]) or set(b) <= set(groups[(64, 32)]) for b in batches)
    assert {i for b in batches for i in b} == set(range(7))
    assert batches == epoch_batches(groups, 4, seed=1, epoch=0)
    assert batches != epoch_batches(groups, 4, seed=1, epoch=1)


def test_empty_or_unusable_folder_is_a_one_line_error(tmp_path, base_model):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_sana(*finetune_args(empty, base_model, tmp_path / "out"))
    assert result.returncode == 2
    assert "no usable training images" in assert_one_line_error(result)
    (empty / "a.png").write_bytes(b"not a png")
    (empty / "a.txt").write_text("caption")
    result = run_sana(*finetune_args(empty, base_model, tmp_path / "out2"))
    assert "unreadable image" in assert_one_line_error(result)
    result = run_sana(*finetune_args(tmp_path / "missing", base_model, tmp_path / "out3"))
    assert "data folder not found" in assert_one_line_error(result)


def test_lora_targets_matching_no_layer_are_refused_before_the_data_is_encoded(tmp_path, base_model):
    data = make_dataset(tmp_path / "data", count=2)
    result = run_sana(*finetune_args(data, base_model, tmp_path / "out", "--cache", str(tmp_path / "cache"),
                                     "--lora-targets", "to_q,to_qq"))
    assert "LoRA target 'to_qq' matches no layer of this model" in assert_one_line_error(result)
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # nothing was encoded first


def test_truncated_image_is_skipped_and_reported(tmp_path, base_model):
    data = make_dataset(tmp_path / "data", count=4)
    whole = (data / "img00.png").read_bytes()
    big = data / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(big)
    big.write_bytes(big.read_bytes()[:-400])  # the header is fine, the pixel data is cut short
    (data / "big.txt").write_text("noise")
    assert whole
    result = run_sana(*finetune_args(data, base_model, tmp_path / "out", "--steps", "1", "--res", "35"))
    assert result.returncode == 0, result.stderr
    assert "4 image(s) used" in result.stderr
    assert re.search(r"--res 35: sides are multiples of \d+ for this model, so square images train at \d+x\d+",
                     result.stderr), result.stderr
    assert "unreadable or truncated image (big.png)" in result.stderr
    assert re.search(r"encoded 4 image latents in \d+ s \(\d+/s, \d+ s waiting for files\) and \d+ captions in", result.stderr), result.stderr
    assert re.search(r"^train 1/1 loss \d", result.stderr, re.M), result.stderr  # a log gets plain progress lines


# -- training ---------------------------------------------------------------------------------------------

def test_loss_falls_from_scratch(tmp_path, base_model):
    """--init random: a fixed set of noisy samples is fitted much better after training."""
    from sana.training.config import TrainConfig
    from sana.training.trainer import Trainer

    data = make_dataset(tmp_path / "data", count=4)
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "out"), model_dir=str(base_model), mode="full",
                      init="random", resolution=32, batch_size=4, steps=60, lr=3e-3, checkpoint_every=1000,
                      device="cpu", gradient_checkpointing=False)
    trainer = Trainer(cfg)
    trainer.prepare_data()
    trainer.build()

    def held_out_loss() -> float:
        with torch.no_grad():
            return sum(trainer.loss(10_000 + i).item() for i in range(8)) / 8

    before = held_out_loss()
    trainer.train()
    after = held_out_loss()
    assert after < 0.5 * before, (before, after)
    assert (tmp_path / "out" / "model" / "transformer" / "config.json").is_file()


def test_killed_run_resumes_to_the_same_weights(tmp_path, base_model):
    """Bit for bit, at one thread count: left to choose, each process takes the cores idle when it starts, and
    another thread count sums in another order."""
    data = make_dataset(tmp_path / "data")
    extra = ("--steps", "40", "--checkpoint-every", "3", "--lr", "1e-3", "--lora-rank", "4", "--ema", "0.9",
             "--lr-schedule", "cosine", "--warmup", "5", "--caption-dropout", "0.2")
    threads = {"SANA_THREADS": "2"}
    whole = run_sana(*finetune_args(data, base_model, tmp_path / "whole", *extra), env=threads)
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([sana_executable(), *finetune_args(data, base_model, out, *extra)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **threads})
    deadline = time.time() + 240
    while not (out / "checkpoints" / "step-000006").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    finished = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert finished and "step-000040" not in finished

    resumed = run_sana(*finetune_args(data, base_model, out, *extra, "--resume"), env=threads)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from step-" in resumed.stderr
    assert_same_weights(trained_weights(out), trained_weights(tmp_path / "whole"))
    from safetensors.torch import load_file

    assert_same_weights(load_file(str(out / "pytorch_lora_weights.safetensors")),
                        load_file(str(tmp_path / "whole" / "pytorch_lora_weights.safetensors")))
    losses = [row.split(",")[1] for row in (out / "loss.csv").read_text().splitlines()[1:]]
    assert losses == [row.split(",")[1] for row in (tmp_path / "whole" / "loss.csv").read_text().splitlines()[1:]]


def test_ctrl_c_saves_a_checkpoint_and_resume_finishes(tmp_path, base_model):
    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    args = finetune_args(data, base_model, out, "--steps", "400", "--checkpoint-every", "1000", "--lora-rank", "2")
    proc = subprocess.Popen([sana_executable(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "loss.csv").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "checkpoint saved" in stderr and "--resume" in stderr
    (step,) = [int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir()]
    assert 1 <= step < 400
    export = run_sana(*args[:args.index("--steps")], "--steps", str(step), "--resume", "--batch-size", "2")
    assert export.returncode == 0, export.stderr  # nothing left to train: the result is written from the checkpoint
    assert export.stdout.strip() == str(out / "pytorch_lora_weights.safetensors")
    again = run_sana(*args[:args.index("--steps")], "--steps", str(step + 2), "--resume", "--batch-size", "2")
    assert again.returncode == 0, again.stderr
    assert (out / "checkpoints" / f"step-{step + 2:06d}").is_dir()


def test_out_folder_is_never_overwritten_and_resume_keeps_settings(tmp_path, base_model):
    data = make_dataset(tmp_path / "data", count=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user file")
    result = run_sana(*finetune_args(data, base_model, out, "--steps", "1"))
    assert "is not empty" in assert_one_line_error(result)
    assert (out / "mine.txt").read_text() == "user file"

    run = tmp_path / "run"
    assert run_sana(*finetune_args(data, base_model, run, "--steps", "1", "--lora-rank", "2")).returncode == 0
    result = run_sana(*finetune_args(data, base_model, run, "--steps", "2"))
    assert "--resume" in assert_one_line_error(result)
    result = run_sana(*finetune_args(data, base_model, run, "--steps", "2", "--lora-rank", "8", "--resume"))
    assert "lora_rank" in assert_one_line_error(result)
    result = run_sana(*finetune_args(data, base_model, run, "--steps", "2", "--full", "--resume"))
    assert "changed settings: mode" in assert_one_line_error(result)


def test_second_run_reuses_the_feature_cache(tmp_path, base_model):
    from sana.training.config import TrainConfig
    from sana.training.trainer import TrainEvents, Trainer

    data = make_dataset(tmp_path / "data", count=4)
    encoded = []
    for name in ("a", "b"):
        cfg = TrainConfig(data=str(data), out=str(tmp_path / name), model_dir=str(base_model), resolution=32,
                          steps=1, device="cpu", cache_dir=str(tmp_path / "cache"))
        trainer = Trainer(cfg, TrainEvents(on_progress=lambda what, done, total: encoded.append((name, what))))
        trainer.prepare_data()
    assert {n for n, _ in encoded} == {"a"}
    (data / "img00.txt").write_text("a changed caption")
    encoded.clear()
    Trainer(TrainConfig(data=str(data), out=str(tmp_path / "c"), model_dir=str(base_model), resolution=32, steps=1,
                        device="cpu", cache_dir=str(tmp_path / "cache")),
            TrainEvents(on_progress=lambda what, done, total: encoded.append(what))).prepare_data()
    assert encoded == ["captions"]


# -- outputs ----------------------------------------------------------------------------------------------

def test_lora_output_gives_the_same_image_in_diffusers_and_sana_gen(tmp_path, base_model):
    from diffusers import SanaPipeline

    data = make_dataset(tmp_path / "data", count=4)
    out = tmp_path / "run"
    result = run_sana(*finetune_args(data, base_model, out, "--steps", "3", "--lr", "5e-2", "--lora-rank", "4",
                                     "--lora-alpha", "8", "--lora-targets", "to_q,to_k,to_v,to_out.0,conv_inverted,conv_point",
                                     "--val-prompt", "a red square", "--val-steps", "2", "--checkpoint-every", "3"))
    assert result.returncode == 0, result.stderr
    lora = out / "pytorch_lora_weights.safetensors"
    assert result.stdout.strip() == str(lora)
    assert (out / "samples" / "step-000003-0.png").is_file() and (out / "loss.png").is_file()
    from sana.lora import lora_base_class

    assert lora_base_class(lora) == "SanaTransformer2DModel"

    prompt, image = "a red square", tmp_path / "ours.png"
    gen = run_sana("gen", prompt, "--model", str(base_model), "--lora", str(lora), "--seed", "3", "--steps", "4",
                   "--res", "32", "--device", "cpu", "--dtype", "fp32", "--out", str(image))
    assert gen.returncode == 0, gen.stderr
    pipe = SanaPipeline.from_pretrained(base_model, torch_dtype=torch.float32)
    pipe.load_lora_weights(str(out))
    reference = pipe(prompt, generator=torch.Generator("cpu").manual_seed(3), num_inference_steps=4, height=32,
                     width=32, use_resolution_binning=False).images[0]
    ours = Image.open(image).convert("RGB")
    plain = SanaPipeline.from_pretrained(base_model, torch_dtype=torch.float32)(
        prompt, generator=torch.Generator("cpu").manual_seed(3), num_inference_steps=4, height=32, width=32,
        use_resolution_binning=False).images[0]
    assert psnr(ours, reference) >= 40
    assert psnr(plain, reference) < 40, "the LoRA changed nothing: the test proves nothing"


def test_full_finetune_output_is_a_model_folder(tmp_path, base_model):
    from diffusers import SanaTransformer2DModel

    data = make_dataset(tmp_path / "data", count=4)
    out = tmp_path / "run"
    result = run_sana(*finetune_args(data, base_model, out, "--full", "--steps", "2", "--save-dtype", "fp32"))
    assert result.returncode == 0, result.stderr
    model = out / "model"
    assert result.stdout.strip() == str(model)
    SanaTransformer2DModel.from_pretrained(model / "transformer")  # diffusers reads our export
    image = tmp_path / "x.png"
    gen = run_sana("gen", "a red square", "--model", str(model), "--steps", "2", "--res", "32", "--device", "cpu",
                   "--out", str(image))
    assert gen.returncode == 0, gen.stderr and image.is_file()


# -- many processes (torchrun, gloo on the CPU) ---------------------------------------------------------------

def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "sana_cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_two_processes_match_one_with_the_global_batch(tmp_path, base_model, mode):
    """DDP (LoRA) and FSDP2 (full) on 2 processes x batch 1 train the weights 1 process x batch 2 trains."""
    data = make_dataset(tmp_path / "data", count=4)
    extra = ["--steps", "3", "--lr", "1e-3", "--checkpoint-every", "3", "--lora-rank", "4"]
    if mode == "full":
        extra += ["--full", "--ema", "0.5"]
    one = run_sana(*finetune_args(data, base_model, tmp_path / "one", *extra))
    assert one.returncode == 0, one.stderr
    args = finetune_args(data, base_model, tmp_path / "two", *extra)
    args[args.index("--batch-size") + 1] = "1"
    two = _torchrun(2, *args)
    assert two.returncode == 0, two.stderr[-3000:]
    # Gradients are averaged over ranks exactly like over one batch: same losses and gradient norms (a sum
    # would double the norm). Adam turns near-zero gradients (cross-attention key biases, which softmax
    # ignores; q features ReLU silences) into full-size steps whose sign is rounding noise, so a few weights
    # may differ by up to a step or two (lr 1e-3); all the others agree to rounding.
    rows = [[r.split(",")[1:4] for r in (tmp_path / name / "loss.csv").read_text().splitlines()[1:]] for name in ("one", "two")]
    for a, b in zip(*rows):
        np.testing.assert_allclose(np.array(a, dtype=float), np.array(b, dtype=float), rtol=1e-3)
    one, two = trained_weights(tmp_path / "one"), trained_weights(tmp_path / "two")
    assert one.keys() == two.keys()
    diffs = torch.cat([(one[k] - two[k]).abs().flatten() for k in one])
    assert diffs.max() < 2.5e-3 and (diffs < 1e-4).float().mean() > 0.99, (diffs.max(), (diffs < 1e-4).float().mean())


def test_preloaded_and_file_backed_features_give_the_same_batches(tmp_path, base_model):
    from sana.training.config import TrainConfig
    from sana.training.trainer import Trainer

    data = make_dataset(tmp_path / "data", count=4)
    losses = []
    for budget in (0, 2**30):
        cfg = TrainConfig(data=str(data), out=str(tmp_path / f"out{budget}"), model_dir=str(base_model), resolution=32,
                          steps=1, device="cpu", cache_dir=str(tmp_path / "cache"), caption_dropout=0.5)
        trainer = Trainer(cfg)
        trainer.prepare_data()
        trainer._memory = None
        trainer._preload(budget)
        assert (trainer._memory is None) == (budget == 0)
        trainer.build()
        with torch.no_grad():
            losses.append([trainer.loss(micro).item() for micro in range(4)])
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_compiled_training_step_follows_the_eager_one(tmp_path, base_model):
    """--compile changes how the step runs, not what it computes: the same losses to float rounding."""
    from sana.training.config import TrainConfig
    from sana.training.trainer import Trainer

    data = make_dataset(tmp_path / "data", count=4)
    losses = []
    for compiled in (False, True):
        cfg = TrainConfig(data=str(data), out=str(tmp_path / f"out{compiled}"), model_dir=str(base_model), mode="full",
                          resolution=32, batch_size=2, steps=3, lr=1e-3, device="cpu", cache_dir=str(tmp_path / "cache"),
                          gradient_checkpointing=False, compile=compiled, ema=0.9)
        trainer = Trainer(cfg)
        trainer.prepare_data()
        trainer.build()
        losses.append([trainer._optimizer_step().item() for _ in range(3)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    assert losses[0][0] != losses[0][2]  # the weights did change between steps


def test_time_limit_exports_what_is_trained_and_resume_continues(tmp_path, base_model):
    data = make_dataset(tmp_path / "data", count=4)
    out = tmp_path / "out"
    args = finetune_args(data, base_model, out, "--full", "--steps", "100000", "--checkpoint-every", "100000",
                         "--max-minutes", "0.01")
    first = run_sana(*args)
    assert first.returncode == 0, first.stderr
    assert "--max-minutes 0.01 reached at step" in first.stderr
    assert (out / "model" / "transformer" / "config.json").is_file()
    step = int(sorted((out / "checkpoints").iterdir())[-1].name.split("-")[1])
    assert 1 <= step < 100000
    again = run_sana(*finetune_args(data, base_model, out, "--steps", str(step + 2), "--resume", "--max-minutes", "0"))
    assert again.returncode == 0, again.stderr
    assert f"resumed from step-{step:06d}" in again.stderr
    assert int(sorted((out / "checkpoints").iterdir())[-1].name.split("-")[1]) == step + 2
    # loss.csv's clock is the run's: the resumed rows go on from the kept history's time, not from zero
    rows = [r for r in csv.DictReader(open(out / "loss.csv", encoding="utf-8"))]
    at_stop = [float(r["elapsed_s"]) for r in rows if int(r["step"]) == step]
    assert at_stop and at_stop[0] >= 0.6  # --max-minutes 0.01
    assert all(float(r["elapsed_s"]) >= at_stop[0] for r in rows if int(r["step"]) > step)


def test_a_run_that_never_checkpointed_starts_again(tmp_path, base_model):
    """A run stopped before its first checkpoint (here: its only image is unreadable, which only decoding finds)
    leaves its settings behind, on purpose; the same command, or --resume, starts it again instead of refusing
    the folder. (An empty folder, or one without captions, is refused before anything is written.)"""
    data = tmp_path / "data"
    data.mkdir()
    (data / "broken.png").write_bytes(b"not a png")
    (data / "broken.txt").write_text("a broken square")
    out = tmp_path / "run"
    failed = run_sana(*finetune_args(data, base_model, out, "--steps", "1", "--full", "--lr", "3e-4"))
    assert failed.returncode == 2 and (out / "train_config.json").is_file()
    assert "unreadable image" in failed.stderr
    make_dataset(data, count=2)
    again = run_sana(*finetune_args(data, base_model, out, "--resume"))  # the recorded settings, not the defaults
    assert again.returncode == 0, again.stderr
    assert "saved no checkpoint; starting it over" in again.stderr
    record = json.loads((out / "train_config.json").read_text())
    assert (record["mode"], record["steps"], record["lr"]) == ("full", 1, 3e-4)
    assert (out / "model" / "transformer" / "config.json").is_file()


def test_resume_applies_and_records_a_changed_rate(tmp_path, base_model):
    import csv
    import json

    data = make_dataset(tmp_path / "data", count=2)
    out = tmp_path / "run"
    args = finetune_args(data, base_model, out, "--lora-rank", "2", "--checkpoint-every", "1", "--log-every", "1")
    assert run_sana(*args, "--steps", "2", "--lr", "1e-4").returncode == 0
    resumed = run_sana(*args, "--steps", "4", "--lr", "5e-5", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "lr 0.0001 -> 5e-05" in resumed.stderr and "steps 2 -> 4" in resumed.stderr
    record = json.loads((out / "train_config.json").read_text())
    assert record["lr"] == 5e-5
    assert [(r["step"], r["changed"]) for r in record["resumes"]] == [(2, {"steps": [2, 4], "lr": [1e-4, 5e-5]})]
    rows = {int(r["step"]): float(r["lr"]) for r in csv.DictReader((out / "loss.csv").open())}
    assert rows[1] == pytest.approx(1e-4) and rows[3] == pytest.approx(5e-5) and rows[4] == pytest.approx(5e-5)

    # Nothing left to train says so; a resume that does not name --device keeps the recorded one.
    without_device = [a for a in args if a not in ("--device", "cpu")]
    done = run_sana(*without_device, "--resume", env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    assert "at step 4 of 4 already: nothing to train" in done.stderr and "device" not in done.stderr
    assert json.loads((out / "train_config.json").read_text())["device"] == "cpu"

    # --rl --resume of this supervised run is refused before anything is written to it
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    before = (out / "train_config.json").read_bytes()
    rl = run_sana("finetune", str(prompts), "--rl", "--model", str(base_model), "--out", str(out), "--resume")
    assert "holds a supervised fine-tuning run, not an RL one" in assert_one_line_error(rl)
    assert (out / "train_config.json").read_bytes() == before

    # A cut checkpoint file is found before the resume records anything (the record said steps 6 of a run that
    # never went on): one line naming the file, the settings as they were.
    state = out / "checkpoints" / "step-000004" / "state.pt"
    state.write_bytes(state.read_bytes()[:-64])
    message = assert_one_line_error(run_sana(*args, "--steps", "6", "--resume"))
    assert f"checkpoint file {state} is unreadable" in message and "--resume-from" in message
    assert (out / "train_config.json").read_bytes() == before


def test_resume_on_other_or_changed_data_applies_and_records_it(tmp_path, base_model):
    """Another data folder, or files added to it, is applied from the checkpoint on: said in a notice and recorded
    in the resume entry (the data and its fingerprint), so train_config.json says what ran. The same folder
    spelled another way is no change."""
    import shutil

    data = make_dataset(tmp_path / "data", count=2)
    out = tmp_path / "run"
    args = ["--lora-rank", "2", "--checkpoint-every", "1"]
    assert run_sana(*finetune_args(data, base_model, out, *args, "--steps", "1")).returncode == 0
    first = json.loads((out / "train_config.json").read_text())
    assert first["data_fingerprint"].startswith("4 files, ")

    more = tmp_path / "more"
    shutil.copytree(data, more)
    Image.new("RGB", (32, 32), (40, 80, 220)).save(more / "extra.png")
    (more / "extra.txt").write_text("a blue square")
    resumed = run_sana(*finetune_args(more, base_model, out, *args, "--steps", "2", "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    notice = next(line for line in resumed.stderr.splitlines() if "--resume applies" in line)
    assert f"data '{data}' -> '{more}'" in notice and "data_fingerprint '4 files, " in notice and "-> '6 files, " in notice
    record = json.loads((out / "train_config.json").read_text())
    changed = record["resumes"][-1]["changed"]
    assert changed["data"] == [str(data), str(more)] and changed["steps"] == [1, 2]
    assert changed["data_fingerprint"][0] == first["data_fingerprint"] and changed["data_fingerprint"][1].startswith("6 ")
    assert record["data"] == str(more) and "3 image(s) used" in resumed.stderr

    # The same folder, relative from another working directory: nothing changed but --steps.
    again = run_sana(*finetune_args(Path("more"), base_model, out, *args, "--steps", "3", "--resume"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    record = json.loads((out / "train_config.json").read_text())
    assert record["resumes"][-1]["changed"] == {"steps": [2, 3]} and record["data"] == str(more)


def test_resume_past_the_steps_is_refused_and_an_older_checkpoint_sets_the_later_history_aside(tmp_path, base_model):
    import csv

    data = make_dataset(tmp_path / "data", count=2)
    out = tmp_path / "run"
    args = finetune_args(data, base_model, out, "--lora-rank", "2", "--checkpoint-every", "1")
    assert run_sana(*args, "--steps", "3").returncode == 0
    lora = (out / "pytorch_lora_weights.safetensors").read_bytes()

    below = run_sana(*args, "--steps", "2", "--resume")  # would export step 3's weights as step 2's
    assert f"--resume-from {out / 'checkpoints' / 'step-000002'}" in assert_one_line_error(below)
    assert (out / "pytorch_lora_weights.safetensors").read_bytes() == lora

    # Back to step 1 with another rate: steps 2 and 3 of the first history go aside, and loss.csv keeps step 1.
    branch = run_sana(*args, "--steps", "2", "--lr", "5e-5", "--resume-from", str(out / "checkpoints" / "step-000001"))
    assert branch.returncode == 0, branch.stderr
    (aside,) = (out / "checkpoints").glob("abandoned-*")
    assert str(aside) in branch.stderr
    assert sorted(p.name for p in aside.iterdir()) == ["loss.csv", "pytorch_lora_weights.safetensors",
                                                        "step-000002", "step-000003", "train_config.json"]
    assert json.loads((aside / "train_config.json").read_text())["lr"] == 1e-4  # the settings that history ran with
    assert (aside / "pytorch_lora_weights.safetensors").read_bytes() == lora
    assert [r["step"] for r in csv.DictReader((aside / "loss.csv").open())] == ["1", "2", "3"]
    rows = {r["step"]: float(r["lr"]) for r in csv.DictReader((out / "loss.csv").open())}
    assert rows == {"1": pytest.approx(1e-4), "2": pytest.approx(5e-5)}
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-000001", "step-000002"]

    # A plain --resume now goes on from the new history's step 2, not the abandoned step 3.
    again = run_sana(*args, "--steps", "3", "--lr", "5e-5", "--resume")
    assert again.returncode == 0, again.stderr
    assert "resumed from step-000002" in again.stderr
    record = json.loads((out / "train_config.json").read_text())
    assert [(r["step"], "set_aside" in r) for r in record["resumes"]] == [(1, True), (2, False)]
    assert record["resumes"][0]["changed"]["lr"] == [1e-4, 5e-5]

    # Back to the first history's step 2: the second history after step 1 goes aside in turn, the first comes back
    # up to step 2 (its step 3 stays aside), and the run goes on from there as one history.
    # (its own settings, lr 1e-4, not the current history's 5e-5; a checkpoint of another run is refused first)
    other = tmp_path / "other"
    assert run_sana(*finetune_args(data, base_model, other, "--lora-rank", "2", "--steps", "1")).returncode == 0
    foreign = run_sana(*args, "--steps", "3", "--resume-from", str(other / "checkpoints" / "step-000001"))
    assert f"is not a checkpoint of the run in {out}" in assert_one_line_error(foreign)
    assert f"--out {other}" in foreign.stderr
    back = run_sana(*args, "--steps", "3", "--resume-from", str(aside / "step-000002"))
    assert back.returncode == 0, back.stderr
    assert f"of the history in {aside.name}" in back.stderr and "resumed from step-000002" in back.stderr
    (second,) = [p for p in (out / "checkpoints").glob("abandoned-*") if p != aside]
    assert sorted(p.name for p in second.glob("step-*")) == ["step-000002", "step-000003"]
    assert sorted(p.name for p in aside.glob("step-*")) == ["step-000003"]
    rows = {r["step"]: float(r["lr"]) for r in csv.DictReader((out / "loss.csv").open())}
    assert rows == {"1": pytest.approx(1e-4), "2": pytest.approx(1e-4), "3": pytest.approx(1e-4)}
    record = json.loads((out / "train_config.json").read_text())
    assert record["resumes"][-1]["returned_from"].endswith(aside.name)
    assert record["resumes"][-1]["set_aside"].endswith(second.name)
    assert [r.get("set_aside_after") for r in record["resumes"]] == [1, None, 1]  # where each set-aside history left


def test_a_ctrl_c_lost_during_start_up_still_stops_the_run():
    """A KeyboardInterrupt raised inside a `__del__` is printed and dropped; the run must stop anyway."""
    from sana.training.runtime import StopFlag
    from sana.training.trainer import TrainEvents
    from sana_cli.finetune import StartupInterrupt

    before = signal.getsignal(signal.SIGINT)
    phases, steps = [], []
    with StartupInterrupt() as guard:
        events = guard.guarded(TrainEvents(on_phase=phases.append, on_step=steps.append))
        events.on_phase("data")
        try:
            guard._handle(signal.SIGINT, None)  # the handler's KeyboardInterrupt, lost the way a __del__ loses it
        except KeyboardInterrupt:
            pass
        with pytest.raises(KeyboardInterrupt):
            events.on_phase("model")
        assert phases == ["data"]
        # Lost once training started: handed to the loop's own handler, which stops after the step.
        guard.phase = "train"
        with StopFlag() as stop:
            guard.requested = True
            events.on_step("info")
            for _ in range(100):  # the signal is handled between bytecodes, at once
                if stop.requested:
                    break
            assert stop.requested and not guard.requested and steps == ["info"]
    assert signal.getsignal(signal.SIGINT) is before


def test_frames_are_recorded_as_snapped_to_the_vae_rule(tmp_path):
    from sana.training.config import TrainConfig
    from sana_cli.finetune import _snap_frames

    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps(
        {"_class_name": "AutoencoderKLWan", "scale_factor_spatial": 8, "scale_factor_temporal": 4, "z_dim": 16}))
    settings = TrainConfig(data="data", out="run", model_dir=str(tmp_path), frames=7, fps=16.0)
    _snap_frames(settings, {"frames": 7}, main_process=False)
    assert settings.frames == 5
