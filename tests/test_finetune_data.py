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
