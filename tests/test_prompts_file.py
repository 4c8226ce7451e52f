"""Prompts: a prompts file's errors name their line, sizes included; a prompt of spaces is no prompt, on the command
line as in a file; a reward model given as --model is said to be one."""

from __future__ import annotations

import pytest

from sana.errors import SanaError, UsageError
from sana.prompts_file import read_prompts
from sana_cli.generation import parse_resolution, read_jobs, resolve_for
from tests.cli_helpers import assert_one_line_error, run_sana


@pytest.mark.parametrize("line, command, message", [
    ('{"prompt": "a red circle", "res": "banana"}', "gen", "line 2: cannot read the size 'banana'"),
    ('{"prompt": "a red circle", "res": 8}', "gen", "line 2: size 8x8 is out of range"),
    ('{"prompt": "a red circle", "width": 20000, "height": 512}', "gen", "line 2: size 20000x512 is out of range"),
    ('{"prompt": "a red circle", "res": "1000x500"}', "video", "line 2: size 1000x500 is not a multiple of 32"),
    ('{"prompt": "a red circle", "res": "4k"}', "video", "line 2: cannot read the size '4k'"),  # images' name only
], ids=["word", "too-small", "width-height", "clip-multiple", "image-size-name"])
def test_a_bad_size_names_its_line(tmp_path, line, command, message):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a blue square"}\n' + line + "\n")
    with pytest.raises(SanaError) as caught:
        read_jobs({"prompts": str(path)}, {}, command)
    assert str(caught.value).startswith(f"{path} {message}")


def test_good_sizes_pass_as_written(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a", "res": "4k"}\n{"prompt": "b", "res": 512}\n{"prompt": "c", "width": 64, "height": 96}\n')
    jobs = read_prompts(path, check_size=parse_resolution)
    assert [job.overrides["res"] for job in jobs] == ["4k", "512", "64x96"]
    assert [job.overrides["res"] for job in read_prompts(path)] == ["4k", "512", "64x96"]  # no check: as before


@pytest.mark.parametrize("flags", [{"prompt": ""}, {"prompt": "   "}, {"prompt": " \t\n"}, {}],
                         ids=["empty", "spaces", "whitespace", "none"])
def test_a_prompt_of_spaces_is_no_prompt(flags):
    with pytest.raises(UsageError, match="no prompt given"):
        read_jobs(flags, {}, "gen")


def test_a_prompt_of_spaces_falls_back_to_the_replayed_one_as_an_empty_one_does(tmp_path):
    replay = {"prompt": "a red circle"}
    assert read_jobs({"prompt": "  "}, replay, "gen") == read_jobs({"prompt": ""}, replay, "gen") == [("a red circle", {})]
    with pytest.raises(UsageError, match="no prompt given"):
        read_jobs({}, {"prompt": "   "}, "gen")
    path = tmp_path / "prompts.txt"
    path.write_text("a blue square\n")
    assert read_jobs({"prompt": "  ", "prompts": str(path)}, {}, "gen") == [("a blue square", {})]


@pytest.mark.parametrize("text, message", [
    ("   \n\t\n", "has no prompts"),
    ('{"prompt": "   "}\n', 'line 1: "prompt" is missing or empty'),
], ids=["text", "jsonl"])
def test_a_prompts_file_refuses_prompts_of_spaces(tmp_path, text, message):
    path = tmp_path / ("prompts.jsonl" if text.startswith("{") else "prompts.txt")
    path.write_text(text)
    with pytest.raises(SanaError, match=message):
        read_prompts(path)


@pytest.mark.parametrize("prompt", ["", "   "], ids=["empty", "spaces"])
def test_gen_refuses_an_empty_prompt_and_one_of_spaces_alike(tmp_path, prompt):
    message = assert_one_line_error(run_sana("gen", prompt, "-m", "nano", "--dry-run", cwd=tmp_path))
    assert message.startswith("error: no prompt given")


@pytest.mark.parametrize("command, model, noun", [
    ("gen", "clip", "a SANA image model"),
    ("video", "pickscore", "a SANA-Video model"),
], ids=["gen-clip", "video-pickscore"])
def test_a_reward_model_is_said_to_be_one(command, model, noun):
    with pytest.raises(UsageError) as caught:
        resolve_for(command, model, dry_run=True)
    assert str(caught.value).startswith(f"{model} is a reward model, not {noun}")


def test_gen_with_a_reward_model_says_what_it_is(tmp_path):
    message = assert_one_line_error(run_sana("gen", "x", "--model", "clip", cwd=tmp_path))
    assert message.startswith("error: clip is a reward model, not a SANA image model") and "unknown" not in message


def test_the_registry_says_a_reward_model_is_one():
    from sana.errors import ModelNotFound
    from sana.registry import get_spec

    with pytest.raises(ModelNotFound, match="clip is a reward model"):
        get_spec("clip")
    with pytest.raises(ModelNotFound, match="unknown model 'clipp'"):
        get_spec("clipp")


@pytest.mark.parametrize("values, command, words", [
    ('"cfg": -1', "gen", '"cfg" -1 must be a finite number >= 0'),
    ('"sampler": "dpm++"', "gen", "unknown sampler 'dpm++'"),
    ('"pag": -2', "gen", '"pag" -2 must be a finite number >= 0'),
    ('"shift": 0', "sprint", '"shift" 0 must be a finite number > 0'),
], ids=["cfg", "sampler", "pag", "sprint-shift"])
def test_an_image_lines_bad_value_names_the_file_and_line(tmp_path, values, command, words):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "a small red circle on the left on a white background"}\n'
                                             '{"prompt": "a small red circle on the left on a white background", '
                                             + values + "}\n")
    message = assert_one_line_error(run_sana(command, "--prompts", "prompts.jsonl", "--model", "nano", "--dry-run",
                                             cwd=tmp_path))
    assert message.startswith("error: prompts.jsonl line 2: ") and words in message, message
