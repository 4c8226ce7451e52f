"""`sana finetune` around its loop: what it takes a data folder for before torch loads (images in subfolders are
images for an image model, a folder of frames is a clip only when it is captioned as one), what a validation sample
records, and Ctrl-C."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sana.errors import UsageError
from sana_cli.finetune_video import check_data_kind


def images(folder: Path, names: list[str], captions: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (16, 16), (200, 40, 40)).save(folder / f"{name}.png")
        if captions:
            (folder / f"{name}.txt").write_text(f"a red square {name}")


@pytest.mark.parametrize("layout", ["class-folders", "metadata-in-subfolder", "metadata-at-top"])
def test_images_in_subfolders_are_images_for_an_image_model(tmp_path, layout):
    from sana.training.data import scan_folder
    from sana.training.video_data import clips_and_images

    data = tmp_path / "data"
    if layout == "class-folders":
        images(data / "cats", ["a", "b"])
        images(data / "dogs", ["c", "d"])
    elif layout == "metadata-in-subfolder":
        images(data / "train", ["a", "b", "c"], captions=False)
        (data / "train" / "metadata.jsonl").write_text(
            "\n".join(json.dumps({"file_name": f"{n}.png", "text": n}) for n in "abc"))
    else:
        images(data / "cats", ["a", "b"], captions=False)
        (data / "metadata.jsonl").write_text(
            "\n".join(json.dumps({"file_name": f"cats/{n}.png", "text": n}) for n in "ab"))
    clips, found = clips_and_images(data)
    assert clips == [] and len(found) >= 2
    check_data_kind(data, video=False)
    samples, report = scan_folder(data)
    assert len(samples) == len(found), report.lines()


@pytest.mark.parametrize("captioned_by", ["sidecar", "metadata"])
def test_a_frames_folder_captioned_as_one_clip_is_video_data(tmp_path, captioned_by):
    from sana.training.video_data import clips_and_images

    data = tmp_path / "data"
    images(data / "walk", ["f0", "f1", "f2"], captions=False)
    if captioned_by == "sidecar":
        (data / "walk.txt").write_text("a person walking")
    else:
        (data / "metadata.jsonl").write_text(json.dumps({"file_name": "walk", "text": "a person walking"}))
    clips, found = clips_and_images(data)
    assert [c.name for c in clips] == ["walk"] and found == []
    with pytest.raises(UsageError, match="holds video clips, not images"):
        check_data_kind(data, video=False)
    check_data_kind(data, video=True)


def test_a_video_model_still_takes_uncaptioned_frames_folders_and_refuses_loose_images(tmp_path):
    # --caption may caption a frames folder, and the check cannot see it: the video scan reports what is uncaptioned.
    data = tmp_path / "frames"
    images(data / "walk", ["f0", "f1"], captions=False)
    check_data_kind(data, video=True)
    loose = tmp_path / "loose"
    images(loose, ["a"])
    with pytest.raises(UsageError, match="holds images, not clips"):
        check_data_kind(loose, video=True)


# -- what is refused before torch loads ----------------------------------------------------------------------

def _heavy_imports(stderr: str) -> list[str]:
    names = [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
    return sorted({name for name in names if name in ("torch", "diffusers", "transformers")})


def _unusable_layout(folder: Path, case: str) -> tuple[list[str], str]:
    """(the command's arguments, what its error says) for one unusable data folder or --out."""
    data, out = folder / "data", folder / "run"
    data.mkdir()
    if case == "empty":
        return [str(data)], "no usable training images in"
    if case == "no-captions":
        images(data, ["a"], captions=False)
        return [str(data)], "1 skipped: no caption (a.png)"
    if case == "metadata-names-a-missing-file":
        images(data, ["a"], captions=False)
        (data / "metadata.jsonl").write_text(json.dumps({"file_name": "gone.png", "text": "a red square"}) + "\n")
        return [str(data)], "1 skipped: named in metadata.jsonl but missing (gone.png); 1 skipped: no caption (a.png)"
    if case == "data-is-a-file":
        images(data, ["a"])
        return [str(data / "a.png")], "a.png is a file, not a data folder"
    if case == "clips-empty":
        return [str(data), "--model", "nano-video"], "no usable training clips in"
    images(data, ["a"])
    if case == "out-is-a-file":
        out.write_bytes(b"an image")
        return [str(data), "--out", str(out)], "is a file, not a run folder"
    if case == "cache-is-a-file":
        (folder / "afile").write_text("notes")
        return [str(data), "--cache", str(folder / "afile")], f"--cache {folder / 'afile'} is a file"
    return [str(data), "--out", "/proc/sana-run"], "cannot write to /proc/sana-run"  # root cannot create there either


UNUSABLE = ["empty", "no-captions", "metadata-names-a-missing-file", "data-is-a-file", "clips-empty", "out-is-a-file",
            "out-not-writable", "cache-is-a-file"]


@pytest.mark.parametrize("case", UNUSABLE)
def test_unusable_data_or_out_is_one_line_before_torch_and_writes_nothing(tmp_path, case):
    from tests.cli_helpers import run_sana

    if case == "out-not-writable" and not Path("/proc/self").is_dir():
        pytest.skip("needs Linux's /proc")
    args, expected = _unusable_layout(tmp_path, case)
    if "--model" not in args:
        args += ["--model", "nano"]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    result = run_sana("finetune", *args, env={"PYTHONPROFILEIMPORTTIME": "1"})
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("import time:")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], lines
    assert _heavy_imports(result.stderr) == []
    if case != "out-is-a-file":
        assert not (tmp_path / "run").exists()  # no settings left behind to change what the next command does


def test_a_metadata_row_naming_a_missing_file_is_listed(tmp_path):
    from sana.training.data import scan_folder

    data = tmp_path / "data"
    images(data, ["a"], captions=False)
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "a red square"}) + "\n"
                                         + json.dumps({"file_name": "sub/gone.png", "text": "a blue one"}) + "\n")
    samples, report = scan_folder(data)
    assert [s.path.name for s in samples] == ["a.png"]
    assert report.skipped["named in metadata.jsonl but missing"] == [str(Path("sub") / "gone.png")]
    assert "1 skipped: named in metadata.jsonl but missing (sub/gone.png)" in report.lines()

    images(tmp_path, ["outside"], captions=False)
    (data / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in (
        {"file_name": "a.png", "text": "a red square"}, {"file_name": "../outside.png", "text": "not data"},
        {"file_name": "a.png", "text": "a blue square"})))
    samples, report = scan_folder(data)
    assert [(s.path.name, s.caption) for s in samples] == [("a.png", "a blue square")]
    assert report.skipped["named in metadata.jsonl but outside the data folder"] == [str(Path("..") / "outside.png")]
    assert report.skipped["named twice in metadata.jsonl (the later row is used)"] == ["a.png"]


def test_the_data_fingerprint_follows_the_files_training_reads(tmp_path):
    import os

    from sana.training.data import data_fingerprint

    data = tmp_path / "data"
    images(data, ["a", "b"])
    first = data_fingerprint(data)
    assert first.startswith("4 files, ") and data_fingerprint(str(data)) == first
    (data / ".DS_Store").write_text("")  # hidden: training skips it
    assert data_fingerprint(data) == first
    (data / "b.txt").write_text("a red square, edited")
    edited = data_fingerprint(data)
    assert edited != first and edited.startswith("4 files, ")
    os.remove(data / "b.png")
    assert data_fingerprint(data).startswith("3 files, ")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    assert data_fingerprint(prompts).startswith("1 file, ") and data_fingerprint("shapes") is None


def test_a_run_folder_inside_the_data_folder_is_not_data(tmp_path):
    """`sana finetune .` run in the data folder puts its default run folder there: its samples and plots (and a
    clip run's) must never be scanned as training data, and the data fingerprint must not follow them."""
    from sana.training.data import data_fingerprint, scan_folder
    from sana.training.video_data import find_clips

    data = tmp_path / "data"
    images(data, ["a", "b"])
    before = data_fingerprint(data)
    run = data / "finetune-data"
    (run / "samples").mkdir(parents=True)
    (run / "train_config.json").write_text("{}")
    Image.new("RGB", (64, 64)).save(run / "samples" / "step-000002-0.png")
    (run / "samples" / "step-000002-0.txt").write_text("a red square")
    Image.new("RGB", (64, 64)).save(run / "loss.png")
    samples, report = scan_folder(data, caption="a red square")
    assert [s.path.name for s in samples] == ["a.png", "b.png"] and not report.skipped
    assert data_fingerprint(data) == before
    assert find_clips(data, frames_folders=False)[1] == [data / "a.png", data / "b.png"]


def test_images_are_sized_as_shown_and_odd_files_are_skipped_with_their_reason(tmp_path, monkeypatch):
    """A phone photo's EXIF rotation decides its bucket (load_rgb turns it); an image too large to decode safely,
    or a caption that is not UTF-8, is skipped and listed; a UTF-8 or UTF-16 caption with a byte-order mark reads
    as its text; 16-bit grey keeps its shades."""
    import codecs

    import numpy as np

    from sana.training.data import load_rgb, scan_folder

    data = tmp_path / "data"
    data.mkdir()
    photo = Image.new("RGB", (384, 128), (0, 255, 0))
    photo.paste((255, 0, 0), (0, 0, 128, 128))  # stored landscape, shown portrait (orientation 6: 90° clockwise)
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(data / "phone.jpg", exif=exif)
    (data / "phone.txt").write_bytes(codecs.BOM_UTF8 + "a phone photo".encode("utf-8"))
    photo.save(data / "turned.png", exif=exif)  # a PNG's eXIf chunk, read without decoding the pixels
    (data / "turned.txt").write_text("a turned png")
    Image.fromarray(np.full((64, 64), 30000, dtype=np.uint16)).save(data / "grey.png")
    (data / "grey.txt").write_bytes(codecs.BOM_UTF16_LE + "grey".encode("utf-16-le"))
    Image.new("RGB", (64, 64)).save(data / "latin.png")
    (data / "latin.txt").write_bytes("un cercle rouge très grand".encode("latin-1"))
    Image.new("L", (400, 400)).save(data / "huge.png")  # over twice PIL's limit, made small below
    (data / "huge.txt").write_text("a huge image")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)
    samples, report = scan_folder(data)
    by_name = {s.path.name: s for s in samples}
    assert sorted(by_name) == ["grey.png", "phone.jpg", "turned.png"]
    assert (by_name["phone.jpg"].width, by_name["phone.jpg"].height) == (128, 384)
    assert (by_name["turned.png"].width, by_name["turned.png"].height) == (128, 384)
    assert by_name["phone.jpg"].caption == "a phone photo" and by_name["grey.png"].caption == "grey"
    assert report.skipped["caption file is not UTF-8 text"] == ["latin.txt"]
    assert report.skipped["image too large to decode safely"] == ["huge.png"]
    assert np.asarray(load_rgb(data / "grey.png", (64, 64))).mean() == pytest.approx(30000 * 255 / 65535, abs=1)
    top = np.asarray(load_rgb(data / "phone.jpg", (128, 384)))[:128].reshape(-1, 3).mean(axis=0)
    assert top[0] > 200 and top[1] < 60  # the red square, turned to the top as shown


def test_a_checkpoint_that_cannot_be_written_is_one_line_saying_why(tmp_path, monkeypatch):
    """torch.save on a full disk fails with "unexpected pos ..." (a RuntimeError naming nothing): the error says
    the folder, that the disk is full, and that the last complete checkpoint is kept."""
    import shutil
    from collections import namedtuple

    from sana.errors import SanaError
    from sana.training import checkpoint as ckpt

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(SanaError) as caught:
        with ckpt.writing(tmp_path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 308224 vs 308176")
    assert str(caught.value).startswith(f"could not write a checkpoint in {tmp_path}: the disk is full")
    assert "--resume" in str(caught.value)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 0, 10**9))
    with pytest.raises(SanaError, match="Permission denied"):
        with ckpt.writing(tmp_path):
            raise PermissionError(13, "Permission denied")


def test_a_config_file_of_a_few_keys_changes_those_of_the_base_dit(tmp_path):
    """`--init random --config cfg.json` with {"num_layers": 2}: the base model's DiT with two blocks, its
    channels still the autoencoder's (they fell back to the class defaults, 32, and the run failed mid-way)."""
    from sana.embedded import embedded_model_dir
    from sana_cli.finetune_settings import check_config_fits, transformer_config_from

    nano = embedded_model_dir("nano")
    if nano is None:
        pytest.skip("no nano model in this installation")
    base = json.loads((nano / "transformer" / "config.json").read_text())
    (tmp_path / "cfg.json").write_text('{"num_layers": 2}')
    config = transformer_config_from(str(tmp_path / "cfg.json"), nano)
    assert config == {**base, "num_layers": 2} and base["num_layers"] != 2
    check_config_fits(config, nano, "nano")
    (tmp_path / "list.json").write_text("[2]")
    with pytest.raises(UsageError, match="not a JSON object"):
        transformer_config_from(str(tmp_path / "list.json"), nano)


# -- what a validation sample records ---------------------------------------------------------------------

def test_a_validation_sample_records_the_base_model_and_its_run_and_replays(tmp_path):
    """Its step's LoRA is only in a checkpoint: the record names the base model (loadable), the run and the step."""
    from sana.outputs import read_metadata
    from tests.cli_helpers import run_sana
    from tests.tiny_pipeline import build_pipeline

    model = tmp_path / "base"
    build_pipeline(model)
    data = tmp_path / "data"
    images(data / "reds", ["a", "b"])
    out = tmp_path / "run"
    trained = run_sana("finetune", str(data), "--model", str(model), "--out", str(out), "--res", "32", "--device", "cpu",
                       "--steps", "1", "--val-prompt", "a red square", "--val-steps", "2")
    assert trained.returncode == 0, trained.stderr
    sample = out / "samples" / "step-000001-0.png"
    record = read_metadata(sample)
    assert Path(record.model) == model.resolve() and record.loras == []
    assert record.extra["training_step"] == 1 and Path(record.extra["run"]) == out.resolve()
    assert str(out.resolve() / "pytorch_lora_weights.safetensors") in record.extra["replay"]
    replay = tmp_path / "replay.png"
    made = run_sana("gen", "--from", str(sample), "-o", str(replay), "--device", "cpu")
    assert made.returncode == 0, made.stderr
    assert Path(read_metadata(replay).model) == model.resolve()
    assert "pytorch_lora_weights.safetensors" in " ".join(made.stderr.split())  # the sample's replay note, said


# -- Ctrl-C -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_says_at_once_it_stops_after_the_step_and_twice_stops_now(tmp_path, monkeypatch, presses):
    import os
    import signal

    from sana.errors import Interrupted
    from sana.training.config import TrainConfig
    from sana.training.trainer import Trainer, TrainEvents, run
    from tests.tiny_pipeline import build_pipeline

    model = tmp_path / "base"
    build_pipeline(model)
    data = tmp_path / "data"
    images(data, ["a", "b"])
    real = Trainer._optimizer_step
    done = []

    def optimizer_step(self):
        done.append(1)
        if len(done) == 3:  # inside step 3
            for _ in range(presses):
                os.kill(os.getpid(), signal.SIGINT)  # the handler runs before the next line
        return real(self)

    monkeypatch.setattr(Trainer, "_optimizer_step", optimizer_step)
    notes = []
    out = tmp_path / "run"
    cfg = TrainConfig(data=str(data), out=str(out), model_dir=str(model), resolution=32, steps=6, device="cpu",
                      checkpoint_every=2)
    events = TrainEvents(on_notice=notes.append)
    if presses == 1:
        result = run(cfg, events=events)
        assert result.interrupted and result.step == 3 and result.output is None
        assert result.checkpoint == out / "checkpoints" / "step-000003"
    else:
        with pytest.raises(Interrupted, match=r"stopped at once after step 2; the last checkpoint is kept in .*"
                                              r"step-000002"):
            run(cfg, events=events)
        assert not (out / "checkpoints" / "step-000003").exists()
    assert notes[-1] == "stopping after this step, with a checkpoint (Ctrl-C again to stop now, keeping the last checkpoint)"
