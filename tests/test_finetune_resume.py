"""A run folder's history across resumes (`sana_cli/finetune_resume.py`), on folders laid out by hand: which
history a checkpoint belongs to, and an RL history's best weights coming back with it."""

from __future__ import annotations

import json

import pytest

from sana.errors import UsageError
from sana_cli.finetune_resume import _bring_back_best, checkpoint_history


def _best(folder, round_index: int, tag: str) -> None:
    (folder / "best").mkdir(parents=True)
    (folder / "best" / "weights.txt").write_text(tag)
    (folder / "best.json").write_text(json.dumps({"round": round_index, "val_reward": 0.5, "path": "best"}))


def test_a_checkpoint_belongs_to_the_run_a_set_aside_history_of_it_or_is_refused(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    assert checkpoint_history(run, run / "checkpoints" / "step-000002") is None
    aside = run / "checkpoints" / "abandoned-20261205-010203"
    assert checkpoint_history(run, aside / "step-000003") == aside.resolve()
    with pytest.raises(UsageError, match="not a checkpoint of the run in") as refused:
        checkpoint_history(run, other / "checkpoints" / "step-000001")
    assert f"--out {other.resolve()}" in refused.value.hint
    with pytest.raises(UsageError, match="not a checkpoint of the run in"):
        checkpoint_history(run, tmp_path / "loose" / "step-000001")


@pytest.mark.parametrize("aside_made", [True, False])
def test_a_history_brought_back_brings_its_best_and_keeps_the_shared_one(tmp_path, aside_made):
    run = tmp_path / "run"
    folder = run / "checkpoints" / "abandoned-a"   # the history coming back (best at round 3)
    aside = run / "checkpoints" / "abandoned-b" if aside_made else None   # the one just set aside
    folder.mkdir(parents=True)
    if aside:
        aside.mkdir()
    _best(folder, 3, "history a, round 3")
    _best(run, 1, "shared, round 1")
    said = _bring_back_best(run, folder, aside, step=4)
    assert said == ["its best weights (round 3) too"]
    assert (run / "best" / "weights.txt").read_text() == "history a, round 3"
    assert json.loads((run / "best.json").read_text())["round"] == 3
    kept = aside or folder  # nothing deleted: the superseded best went beside the history it belongs to
    assert (kept / "best" / "weights.txt").read_text() == "shared, round 1"
    assert not list(run.glob(".best*"))


def test_a_best_found_after_the_checkpoint_stays_set_aside(tmp_path):
    run = tmp_path / "run"
    folder = run / "checkpoints" / "abandoned-a"
    folder.mkdir(parents=True)
    _best(folder, 5, "history a, round 5")
    assert _bring_back_best(run, folder, None, step=4) == []
    assert (folder / "best.json").is_file() and not (run / "best").exists()


def test_a_run_on_a_built_in_model_resumes_after_the_install_moved(tmp_path):
    """The run records the model's name beside its folder: when that folder is gone (sana installed again
    elsewhere), a resume finds the model again by name, with or without --model, and samples name it too."""
    from tests.cli_helpers import run_sana

    data, out = tmp_path / "data", tmp_path / "run"
    assert run_sana("shapes", "make", str(data), "--num", "4", "--seed", "1").returncode == 0
    args = ("finetune", str(data), "--model", "nano", "--out", str(out), "--batch-size", "2", "--checkpoint-every", "1",
            "--device", "cpu")
    first = run_sana(*args, "--steps", "1")
    assert first.returncode == 0, first.stderr
    config = json.loads((out / "train_config.json").read_text())
    assert config["model"] == "nano"
    config["model_dir"] = str(tmp_path / "old-install" / "sana" / "nano" / "model")  # no longer there
    (out / "train_config.json").write_text(json.dumps(config))
    again = run_sana("finetune", str(data), "--out", str(out), "--resume", "--steps", "2", "--device", "cpu")
    assert again.returncode == 0, again.stderr
    assert "resumed from step-" in again.stderr
    named = run_sana(*args, "--steps", "3", "--resume")
    assert named.returncode == 0, named.stderr
    assert "changed settings" not in named.stderr


def test_a_run_records_its_data_absolute_and_says_how_to_go_on_from_anywhere(tmp_path, monkeypatch):
    """Data given relative is recorded absolute (a resume from another folder reads the same files); a resumed
    run's own spelling stays while it is the same data; the `continue with` line names absolute paths, a prompt
    grammar by its name."""
    from sana_cli.finetune import resume_command
    from sana_cli.finetune_settings import recorded_data

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    assert recorded_data("data", None) == str(tmp_path.resolve() / "data")

    class Saved:
        data = "data"

    assert recorded_data("./data", Saved) == "data"
    assert resume_command("data", tmp_path / "my run") == \
        f"sana finetune {tmp_path.resolve() / 'data'} --out '{tmp_path.resolve() / 'my run'}' --resume"
    assert resume_command("shapes:hard", tmp_path / "run").startswith("sana finetune shapes:hard --out /")
