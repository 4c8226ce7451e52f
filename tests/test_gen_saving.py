"""Nothing finished is lost: each image is saved as soon as it is decoded, a failed save keeps the image under a
printed temporary name, Ctrl-C says how many were saved, and `--skip-existing` continues a run that stopped.
Output that is not a terminal gets progress as plain lines, and `--json` one line a file. On the nano model."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sana.errors import Interrupted, SanaError
from sana.embedded import embedded_model_dir
from sana_cli.run_output import ProgressLines, save_or_keep
from tests.cli_helpers import psnr, run_sana

nano = pytest.mark.skipif(embedded_model_dir("nano") is None, reason="no nano model in this installation")
PROMPT = "a small blue square at the top left on a white background"  # outside the grammar: no "top left"


def test_a_refused_save_keeps_the_image_and_names_it(tmp_path):
    written = []

    def save(target: Path) -> Path:
        if target.parent == tmp_path / "full":
            raise OSError(28, "No space left on device")
        target.write_text("image")
        written.append(target)
        return target

    with pytest.raises(SanaError) as caught:
        save_or_keep(save, tmp_path / "full" / "fox-0.png")
    message = str(caught.value)
    assert "could not save" in message and "No space left on device" in message
    assert written and f"kept at {written[0]}" in message and written[0].name.endswith("fox-0.png")
    written[0].unlink()


def test_a_record_too_long_for_a_jpeg_is_refused_before_work_or_kept_as_a_png(tmp_path):
    from PIL import Image as PILImage

    from sana.outputs import GenerationRecord, check_jpeg_room, save_image

    check_jpeg_room("a short prompt", "blurry")
    with pytest.raises(SanaError, match="too long to record in a JPEG"):
        check_jpeg_room("a red circle " * 5000)  # 65,000 characters: over 64 KB

    # Past the check (a record grown by its other fields): the image is kept as a PNG, named in the error.
    record = GenerationRecord(prompt="x " * 33000)
    with pytest.raises(SanaError) as caught:
        save_or_keep(lambda target: save_image(PILImage.new("RGB", (8, 8)), target, record), tmp_path / "big.jpg")
    kept = Path(str(caught.value).split("kept at ")[1].rstrip(")"))
    assert "metadata is too long for a JPEG" in str(caught.value) and kept.suffix == ".png"
    assert PILImage.open(kept).format == "PNG" and not (tmp_path / "big.jpg").exists()
    kept.unlink()


def test_progress_lines_are_rate_limited(capsys):
    lines = ProgressLines(every_s=3600)
    lines.phase("denoise")
    for done in range(1, 21):
        lines.step(done, 20)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "denoise..." and len(err) == 2 and err[1].startswith("denoise 20/20")


def test_quiet_prints_no_progress_lines(capsys, monkeypatch):
    from sana_cli import console

    monkeypatch.setattr(console.settings, "quiet", True)
    lines = ProgressLines(every_s=0)
    lines.phase("denoise")
    for done in range(1, 3):
        lines.step(done, 2)
    assert capsys.readouterr().err == ""


def test_training_bars_become_rate_limited_lines_in_a_log(capsys, monkeypatch):
    """`console.progress` where stderr is not a terminal: the bar's calls print plain lines, at most one a task
    per interval, the finished state once, and where an unfinished task stopped when the block ends."""
    from sana_cli import console

    monkeypatch.setattr(console.settings, "quiet", False)
    with console.progress(every_s=3600) as bar:
        assert isinstance(bar, console.ProgressLog)  # pytest's captured stderr is not a terminal
        train = bar.add_task("train", total=100, status="")
        cache = bar.add_task("encode latents", total=8, status="")
        for done in range(1, 9):
            bar.update(cache, completed=done)
        bar.update(cache, description="encode captions", completed=3, total=3)
        for step in range(10, 60, 10):
            bar.update(train, completed=step, status=f"loss {1 / step:.4f}")
        bar.console.print("checkpoint: run/checkpoints/step-000050", highlight=False)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("encode latents 8/8 (") and err[1].startswith("encode captions 3/3 (")
    assert err[2] == "checkpoint: run/checkpoints/step-000050"
    assert err[3].startswith("train 50/100 loss 0.0200 (") and "eta" in err[3] and len(err) == 4

    with console.progress(every_s=0) as bar:  # every update a line, but never the same state twice
        task = bar.add_task("rendering", total=3)
        for done in (1, 1, 2, 3):
            bar.update(task, completed=done)
    assert [line.split(" (")[0] for line in capsys.readouterr().err.splitlines()] == [
        "rendering 1/3", "rendering 2/3", "rendering 3/3"]


@nano
def test_skip_existing_continues_a_stopped_run_with_the_same_pixels(tmp_path):
    args = ("gen", PROMPT, "-m", "nano", "--device", "cpu", "--num", "3", "--seed", "5", "--steps", "4",
            "-o", f"{tmp_path / 'out'}/", "--json")
    first = run_sana(*args)
    assert first.returncode == 0, first.stderr
    records = [json.loads(line) for line in first.stdout.splitlines()]
    assert [r["seed"] for r in records] == [5, 6, 7] and all(Path(r["path"]).is_file() for r in records)
    assert "denoise..." in first.stderr and "denoise 4/4" in first.stderr  # plain lines: stderr is a pipe
    assert "the nano model knows only the shapes grammar" in first.stderr
    lost = Path(records[1]["path"])
    before = np.asarray(Image.open(lost))
    lost.unlink()

    again = run_sana(*args, "--skip-existing")
    assert again.returncode == 0, again.stderr
    assert [json.loads(line)["path"] for line in again.stdout.splitlines()] == [str(lost)]
    assert "2 of the run's images exist already" in again.stderr
    # Alone instead of in a batch of three: the same noise and steps, the batch's own float rounding aside.
    assert psnr(np.asarray(Image.open(lost)), before) >= 40

    done = run_sana(*args, "--skip-existing")
    assert done.returncode == 0 and done.stdout == "" and "nothing to make" in done.stderr


@nano
def test_ctrl_c_says_how_many_images_were_saved(tmp_path, monkeypatch):
    import sana.outputs
    from sana_cli.gen import run

    real_save, calls = sana.outputs.save_image, []

    def save_once_then_interrupt(image, path, record, **kwargs):
        calls.append(path)
        if len(calls) > 1:
            raise KeyboardInterrupt  # Ctrl-C after the first image was saved
        return real_save(image, path, record, **kwargs)

    monkeypatch.setattr(sana.outputs, "save_image", save_once_then_interrupt)
    flags = dict(prompt=PROMPT, model="nano", device="cpu", num=3, seed=1, steps=2, out=f"{tmp_path}/")
    with pytest.raises(Interrupted) as caught:
        run(flags, command="gen")
    assert "interrupted: 1 of 3 images saved" in str(caught.value) and "--skip-existing" in str(caught.value)
    assert len(list(tmp_path.glob("*.png"))) == 1


def test_tables_print_whole_on_a_narrow_or_piped_console(monkeypatch):
    import io

    from rich.console import Console
    from rich.table import Table

    from sana_cli import console

    buffer = io.StringIO()
    monkeypatch.setattr(console, "out", Console(file=buffer, width=40, soft_wrap=True))
    table = Table("model", "size", "denoise, s", "peak GiB (diffusers / ours)")
    table.add_row("video-2b-480p", "832x480", "encode 0.05, denoise 24.57, decode 1.84", "17.4 / 17.4")
    console.table(table)
    text = buffer.getvalue()
    assert "encode 0.05, denoise 24.57, decode 1.84" in text and "peak GiB (diffusers / ours)" in text
    assert "…" not in text


@nano
def test_gpus_splits_a_prompts_file_across_processes_with_the_same_names(tmp_path):
    """--gpus 2 --device cpu: two torchrun processes share one plan; the files are those of a one-process run."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle in the center on a white background\n"
                       "a small green square on the left on a black background\n"
                       "a large blue triangle at the top on a white background\n")
    common = ("gen", "--prompts", str(prompts), "-m", "nano", "--device", "cpu", "--steps", "2", "--seed", "3")
    one = run_sana(*common, "-o", f"{tmp_path / 'one'}/")
    assert one.returncode == 0, one.stderr
    two = run_sana(*common, "-o", f"{tmp_path / 'two'}/", "--gpus", "2")
    assert two.returncode == 0, two.stderr
    assert "launching 2 processes" in two.stderr
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(names) == 3 and sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:  # one image a prompt either way: the same noise and steps (CPU threads may differ a process,
        # and with them the order of float sums, so not always to the bit)
        one_image, two_image = (np.asarray(Image.open(tmp_path / run / name)) for run in ("one", "two"))
        assert psnr(one_image, two_image) >= 40


@nano
def test_gpus_takes_the_long_num_option_and_a_quoted_prompt(tmp_path):
    """--num N in full (torchrun's own parser once read it as its --numa-binding), and a prompt with quotes: the
    processes get the command's arguments as given, and the launch line shows them quoted for a shell."""
    prompt = "a large red circle in the center on a white background, 'v2' \"final\""
    two = run_sana("gen", prompt, "-m", "nano", "--device", "cpu", "--steps", "2", "--seed", "3", "--num", "2",
                   "-o", f"{tmp_path / 'two'}/", "--gpus", "2")
    assert two.returncode == 0, two.stderr
    launch = next(line for line in two.stderr.splitlines() if line.startswith("launching 2 processes"))
    assert shlex.split(launch.split(": ", 1)[1])[:3] == ["sana", "gen", prompt]
    assert len(list((tmp_path / "two").glob("*.png"))) == 2


@nano
def test_brackets_and_emoji_codes_in_names_and_prompts_print_as_written(tmp_path):
    """rich reads "[v2]" as a style and ":fire:" as an emoji: a path or prompt holding them must print unchanged,
    on stdout (scripts read it), in notices and in `sana info`'s table."""
    out = tmp_path / "[v2] :fire: final.png"
    prompt = "a small [red] circle :smile: on a white background"
    result = run_sana("gen", prompt, "-m", "nano", "--steps", "2", "--seed", "1", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out) and out.exists()
    assert prompt in result.stderr  # the off-grammar notice quotes it
    shown = run_sana("info", str(out))
    assert shown.returncode == 0, shown.stderr
    assert str(out) in shown.stdout and prompt in shown.stdout


@nano
def test_a_record_of_another_family_gives_its_prompt_and_says_so(tmp_path):
    image = tmp_path / "circle.png"
    prompt = "a large red circle in the center on a white background"
    assert run_sana("gen", prompt, "-m", "nano", "--steps", "2", "--seed", "9", "-o", str(image)).returncode == 0
    result = run_sana("sprint", "--from", str(image), "-m", "sprint-1.6b", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "circle.png was made by sana gen with nano: only its prompt, negative prompt and seed carry over" in \
        " ".join(result.stderr.split())


@nano
def test_dry_run_json_is_one_object_with_the_images_and_the_plan(tmp_path):
    result = run_sana("gen", "a large red circle in the center on a white background", "-m", "nano", "--seed", "4",
                      "--num", "2", "--dry-run", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["dry_run"] is True and plan["model"] == "nano" and plan["memory"]["fits"] is True
    (image,) = plan["images"]
    assert image["seeds"] == [4, 5] and (image["width"], image["height"]) == (256, 256)
    assert not list(tmp_path.iterdir())


def test_sprint_dry_run_plans_from_the_registry_when_no_model_is_given(tmp_path):
    """A dry run reads no weights, so with nothing downloaded it plans the registry's Sprint model, as `sana
    video --dry-run` plans its own."""
    result = run_sana("sprint", "a cat", "--dry-run", "--json", cwd=tmp_path,
                      env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["model"] == "sprint-1.6b" and not list(tmp_path.glob("*.png"))


@nano
def test_skip_existing_continues_a_run_whose_seeds_were_drawn(tmp_path):
    """Prompts without a seed draw one; a rerun with --skip-existing must find the earlier outputs (named by their
    seed) instead of drawing a new seed and making everything again."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a large red circle in the center on a white background", "num": 2}\n')
    args = ("gen", "--prompts", str(prompts), "-m", "nano", "--steps", "2", "-o", f"{tmp_path / 'out'}/",
            "--skip-existing")
    first = run_sana(*args)
    assert first.returncode == 0, first.stderr
    made = sorted((tmp_path / "out").iterdir())
    assert len(made) == 2
    made[1].unlink()  # as if the run had stopped after its first image
    again = run_sana(*args)
    assert again.returncode == 0, again.stderr
    assert sorted((tmp_path / "out").iterdir()) == made and "continues from seed" in again.stderr
    assert "nothing to make" in run_sana(*args).stderr


@nano
def test_prompts_alike_in_their_first_words_never_share_a_file(tmp_path):
    """Names are cut to a slug of the first words: two prompts that share them (one line of a prompts file edited)
    still get files of their own, a rerun plans the same names, and --skip-existing skips a file only when its
    record holds the prompt and seed, never a file that merely has the name."""
    white, black = (f"a small red circle on the left on a {colour} background" for colour in ("white", "black"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"a large blue square in the center on a white background\n{white}\n")
    args = ("gen", "--prompts", str(prompts), "-m", "nano", "--steps", "2", "--seed", "3", "-o", f"{tmp_path / 'out'}/")
    first = run_sana(*args)
    assert first.returncode == 0, first.stderr
    made = first.stdout.split()
    assert len(made) == 2

    prompts.write_text(f"a large blue square in the center on a white background\n{black}\n")  # one line edited
    again = run_sana(*args, "--skip-existing")
    assert again.returncode == 0, again.stderr
    (edited,) = again.stdout.split()
    assert edited not in made and "1 of the run's images exist already" in again.stderr
    assert json.loads(run_sana("info", edited, "--json").stdout)["prompt"] == black
    refused = run_sana(*args)  # the same names again: refused before any work
    assert refused.returncode == 1 and refused.stderr.startswith(f"error: {made[0]} exists; use --force")
    assert "nothing to make" in run_sana(*args, "--skip-existing").stderr

    Path(edited).write_bytes(Path(made[1]).read_bytes())  # the white circle under the black one's name
    in_the_way = run_sana(*args, "--skip-existing")
    message = in_the_way.stderr.strip()
    assert in_the_way.returncode == 1 and "\n" not in message
    assert message.startswith(f"error: {edited} is in the way: it holds another prompt, '{white}'")
