"""What a new user trips over: fast one-line errors (before torch is imported), `-h`, mistyped options, model
name suggestions and completion, LoRA arguments, seeds, and output names that never collide."""

from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest

from sana.errors import SanaError, UsageError
from sana.outputs.naming import prompt_stem
from tests.cli_helpers import assert_one_line_error, run_sana

HEAVY = ("torch", "diffusers", "transformers")


def heavy_imports(stderr: str) -> list[str]:
    """Top-level heavy packages in `PYTHONPROFILEIMPORTTIME` output ("import time: self | cumulative | name")."""
    names = [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
    return sorted({name for name in names if name in HEAVY})


def run_profiled(*args: str, cwd):
    """`sana ARGS` with Python's import profile on stderr; returns (result, the stderr lines that are not it)."""
    result = run_sana(*args, cwd=cwd, env={"PYTHONPROFILEIMPORTTIME": "1"})
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("import time:")]
    return result, lines


# -- errors before the heavy imports ------------------------------------------------------------------------------

FAST_ERRORS = {
    "from-missing": (("gen", "--from", "missing.png"), "missing.png"),
    "res": (("gen", "x", "--res", "abc"), "size 'abc'"),
    "finetune-data": (("finetune", "nope"), "data folder not found"),
    "video-model-to-gen": (("gen", "x", "-m", "video-2b-480p"), "sana video"),
    "world-model-to-gen": (("gen", "x", "-m", "wm-2.6b"), "sana world"),
    "image-model-to-sprint": (("sprint", "x", "-m", "sana-1.6b"), "sana gen"),
    "model-typo": (("gen", "x", "-m", "sana-16b"), "did you mean sana-1.6b"),
    "seed-range": (("gen", "x", "--seed", "-2"), "seed -2 is out of range"),
    "seed-too-big": (("gen", "x", "--seed", str(2**32)), "out of range"),
    "sampler": (("gen", "x", "--sampler", "ddim"), "sampler 'ddim'"),
    "dtype": (("gen", "x", "--dtype", "fp8"), "--dtype 'fp8'"),
    "lora-missing": (("gen", "x", "--lora", "missing.safetensors"), "LoRA file not found"),
    "lora-scale": (("gen", "x", "--lora", "prompts.txt:strong"), "scale 'strong' is not a number"),
    "transformer-missing": (("gen", "x", "--transformer", "nope.pth"), "does not exist"),
    "prompts-missing": (("gen", "--prompts", "nope.txt"), "nope.txt not found"),
    "finetune-model": (("finetune", "data", "-m", "nanoo"), "did you mean nano"),
    "finetune-resume": (("finetune", "data", "--resume", "-o", "run"), "no sana finetune run"),
    "finetune-lr": (("finetune", "data", "-m", "nano", "--lr-schedule", "cosy"), "--lr-schedule"),
    "finetune-val-guidance": (("finetune", "data", "-m", "nano", "--val-guidance", "-1"), "--val-guidance"),
    "mistyped-option": (("gen", "x", "--stesp", "3"), "--steps"),
    "clip-keys-to-gen": (("gen", "--prompts", "clips.jsonl", "-m", "nano"), "which images do not take"),
    "memory-mode": (("gen", "x", "-m", "nano", "--memory", "bogus"), "memory mode 'bogus'"),
    "max-vram": (("gen", "x", "-m", "nano", "--max-vram", "lots"), "--max-vram 'lots'"),
    "out-under-a-file": (("gen", "x", "-m", "nano", "-o", "prompts.txt/out/"), "prompts.txt is not a directory"),
    "force-and-skip": (("gen", "x", "-m", "nano", "--force", "--skip-existing"), "contradict"),
    "cfg-negative": (("gen", "x", "-m", "nano", "--cfg", "-1"), "-1 is not a guidance scale"),
    "cfg-nan": (("gen", "x", "-m", "nano", "--cfg", "nan"), "nan is not a guidance scale"),
    "video-cfg-inf": (("video", "x", "--cfg", "inf"), "inf is not a guidance scale"),
    "pag-negative": (("gen", "x", "-m", "nano", "--pag", "-2"), "-2 is not a guidance scale"),
    "shift-negative": (("gen", "x", "-m", "nano", "--shift", "-1"), "-1 is not a flow shift"),
    "world-shift-zero": (("world", "x", "--shift", "0"), "0 is not a flow shift"),
    "prompts-file-cfg-nan": (("gen", "--prompts", "nan.jsonl", "-m", "nano"), "nan.jsonl line 1: \"cfg\" nan must be a finite number"),
    "pag-layer-negative": (("gen", "x", "-m", "nano", "--pag", "2", "--pag-layer", "-1"), "--pag-layer -1"),
    "device-typo": (("gen", "x", "-m", "nano", "--device", "tpu"), "unknown device 'tpu'"),
    "video-device-typo": (("video", "x", "--device", "cuda:one"), "unknown device 'cuda:one'"),
    "out-in-proc": (("gen", "x", "-m", "nano", "-o", "/proc/sana-out/x.png"), "/proc is not writable"),
    "video-fp8-on-the-cpu": (("video", "x", "--fp8", "--device", "cpu"), "--fp8 needs an NVIDIA GPU"),
    "fp8-on-the-cpu": (("gen", "x", "-m", "nano", "--fp8", "--device", "cpu"), "--fp8 needs an NVIDIA GPU"),
    "finetune-config-fit": (("finetune", "data", "-m", "nano", "--init", "random", "--config", "sana-1.6b"),
                            "--config does not fit nano: in_channels 32 (the autoencoder makes 8)"),
    "finetune-weight-decay": (("finetune", "data", "-m", "nano", "--weight-decay", "-1"), "--weight-decay must be 0 or more"),
    "finetune-lora-dropout": (("finetune", "data", "-m", "nano", "--lora-dropout", "2"), "--lora-dropout must be in [0, 1)"),
    "finetune-lora-targets": (("finetune", "data", "-m", "nano", "--lora-targets", ","), "--lora-targets names no module"),
    "finetune-val-steps": (("finetune", "data", "-m", "nano", "--val-steps", "0"), "--val-steps must be at least 1"),
    "finetune-flow-shift": (("finetune", "data", "-m", "nano", "--flow-shift", "-1"), "--flow-shift must be positive"),
    "finetune-warmup": (("finetune", "data", "-m", "nano", "--warmup", "-1"), "--warmup must be 0 or more"),
    "finetune-lora-alpha": (("finetune", "data", "-m", "nano", "--lora-alpha", "-1"), "--lora-alpha must be positive"),
    "finetune-config-alone": (("finetune", "data", "-m", "nano", "--config", "nano"), "add --init random"),
    "finetune-keep-twice": (("finetune", "data", "-m", "nano", "--keep", "2", "--keep-checkpoints", "4"),
                            "--keep 2 and --keep-checkpoints 4 both set"),
    "video-memory-mode": (("video", "x", "-m", "video-2b-480p", "--dry-run", "--memory", "bogus"), "memory mode"),
    "finetune-gpus-without-gpus": (("finetune", "data", "-m", "nano", "--gpus", "2"), "--gpus 2: 0 GPU(s) visible here"),
    "jpeg-prompt-too-long": (("gen", "a red circle " * 5000, "-m", "nano", "-o", "x.jpg"),
                             "too long to record in a JPEG"),
    "scm-to-gen": (("gen", "x", "-m", "nano", "--sampler", "scm"), "sampler 'scm' is SANA-Sprint's"),
    "sprint-steps-in-a-file": (("sprint", "--prompts", "sprint.jsonl"), "sprint.jsonl line 1: \"steps\" 8 is out of range"),
    "sprint-intermediate-not-2-steps": (("sprint", "x", "--steps", "4", "--intermediate-timesteps", "1"),
                                        "middle timestep of a 2-step run, not of 4"),
    "sprint-max-timesteps": (("sprint", "x", "--max-timesteps", "2"), "2 is not a TrigFlow time"),
    "world-max-vram": (("world", "x", "-m", "wm-2.6b", "--actions", "w-8", "--fov", "60", "--preview", "p.png",
                        "--max-vram", "lots"), "--max-vram 'lots'"),
}


@pytest.mark.parametrize("args,expected", FAST_ERRORS.values(), ids=FAST_ERRORS.keys())
def test_bad_arguments_fail_before_torch_is_imported(args, expected, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "prompts.txt").write_text("a dog\n")
    (tmp_path / "clips.jsonl").write_text('{"prompt": "a dog runs", "frames": 17}\n')
    (tmp_path / "nan.jsonl").write_text('{"prompt": "a red circle", "cfg": NaN}\n')
    (tmp_path / "sprint.jsonl").write_text('{"prompt": "a dog", "steps": 8}\n')
    result, lines = run_profiled(*args, cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    assert expected in errors[0], errors[0]
    assert heavy_imports(result.stderr) == [], f"imported {heavy_imports(result.stderr)} before: {errors[0]}"
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_optimizer_extra_is_checked_before_torch(tmp_path):
    (tmp_path / "data").mkdir()
    result, lines = run_profiled("finetune", "data", "-m", "nano", "--optimizer", "adamw8bit", cwd=tmp_path)
    assert "needs bitsandbytes" in lines[-1] and heavy_imports(result.stderr) == []


def test_compile_on_a_cpu_is_noted(tmp_path):
    (tmp_path / "data").mkdir()
    result = run_sana("finetune", "data", "-m", "nano", "--compile", "--device", "cpu", cwd=tmp_path)
    assert "--compile on a CPU" in result.stderr and result.returncode != 0  # then the empty folder stops it


def test_settings_that_do_nothing_are_noted(tmp_path):
    (tmp_path / "data").mkdir()
    result = run_sana("finetune", "data", "-m", "nano", "--val-every", "2", "--device", "cpu", cwd=tmp_path)
    assert "--val-every without --val-prompt" in result.stderr and result.returncode != 0  # then the empty folder
    result = run_sana("finetune", "data", "-m", "nano", "--full", "--lora-rank", "8", "--lora-alpha", "4",
                      "--device", "cpu", cwd=tmp_path)
    assert "--lora-rank, --lora-alpha ignored: this run trains all weights (--full)" in result.stderr


def test_resume_without_a_checkpoint_is_refused_before_torch(tmp_path):
    from sana.training.config import TrainConfig

    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()
    run.mkdir()
    TrainConfig(data=str(data), out=str(run), model_dir=str(tmp_path), resolution=64).save(run)
    (run / "pytorch_lora_weights.safetensors").write_bytes(b"")  # a finished run whose checkpoints were deleted
    result, lines = run_profiled("finetune", "data", "-o", "run", "--resume", cwd=tmp_path)
    assert "no checkpoint to resume" in lines[-1] and heavy_imports(result.stderr) == []
    (run / "pytorch_lora_weights.safetensors").unlink()  # settings alone: a run stopped during start-up
    result, lines = run_profiled("finetune", "data", "-o", "run", "--resume", "-m", "nano", cwd=tmp_path)
    assert any("saved no checkpoint; starting it over" in line for line in lines), lines
    result, lines = run_profiled("finetune", "data", "-o", "run", "--resume-from", "data", cwd=tmp_path)
    assert "not a complete checkpoint" in lines[-1] and heavy_imports(result.stderr) == []


# -- habits -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [("-h",), ("gen", "-h"), ("sprint", "-h"), ("video", "-h"), ("models", "-h")],
                         ids=["sana", "gen", "sprint", "video", "models"])
def test_short_help(args):
    result = run_sana(*args)
    assert result.returncode == 0, result.stderr
    assert f"Usage: sana {' '.join(args[:-1])}".strip() in " ".join(result.stdout.split())


def _commands_and_names() -> dict[str, list[str]]:
    """Every command of the app (`""` for `sana` itself), with its options' names."""
    import typer

    from sana_cli.app import app

    found = {}

    def walk(command, path):
        found[" ".join(path)] = [name for param in command.params for name in (*param.opts, *param.secondary_opts)
                                 if name.startswith("-")]
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


COMMAND_NAMES = _commands_and_names()
LONGEST_NAMES = sorted(COMMAND_NAMES, key=lambda c: max(map(len, COMMAND_NAMES[c]), default=0))[-6:]


@pytest.mark.parametrize("command", sorted({*LONGEST_NAMES, "world"}), ids=lambda c: c.replace(" ", "-") or "sana")
def test_help_at_80_columns_never_cuts_an_option_name(command):
    """A pipe, like a terminal 80 columns wide, once showed `--checkpoint-every` as `--checkpoint-eve…`."""
    result = run_sana(*command.split(), "--help", env={"COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert max(map(len, result.stdout.splitlines())) <= 80
    assert "…" not in result.stdout  # help text wraps too, rather than losing its end
    words = set(re.findall(r"-[\w-]+", result.stdout))
    assert [name for name in COMMAND_NAMES[command] if name not in words] == []
    assert "<bool>" not in result.stdout  # an on/off flag takes no value to show a type for


def test_guidance_is_an_alias_of_cfg_in_gen():
    result = run_sana("gen", "-h")
    assert "--guidance" in result.stdout and "--cfg" in result.stdout


def test_mistyped_option_is_one_line_with_a_suggestion():
    message = assert_one_line_error(run_sana("gen", "x", "--stesp", "3"))
    assert "--stesp" in message and "--steps" in message and "sana gen --help" in message
    assert "--steps" in assert_one_line_error(run_sana("sprint", "x", "--steps", "9"))  # out of 1-4


def test_shell_completion_of_model_names():
    env = {"_SANA_COMPLETE": "complete_bash", "COMP_WORDS": "sana gen --model sana1", "COMP_CWORD": "3"}
    result = run_sana(env=env)
    names = result.stdout.split()
    assert "sana1.5-1.6b" in names and "sana1.5-4.8b" in names and all(n.startswith("sana1") for n in names)
    env["COMP_WORDS"] = "sana video -m vid"
    assert "video-2b-480p" in run_sana(env=env).stdout.split()


def test_torch_free_name_lists_match_the_engine():
    from sana.device import DTYPES
    from sana.sampling import SAMPLERS
    from sana_cli.generation import DTYPE_CHOICES, IMAGE_SAMPLERS

    assert IMAGE_SAMPLERS == tuple(SAMPLERS) and DTYPE_CHOICES == ("auto", *DTYPES)


# -- seeds --------------------------------------------------------------------------------------------------------

def test_seed_checks():
    from sana_cli.generation import MAX_SEED, check_seed

    assert check_seed(None) is None and check_seed(-1) is None  # the caller draws one
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED
    for bad in (-2, MAX_SEED + 1):
        with pytest.raises(UsageError, match="out of range"):
            check_seed(bad)


def test_seed_minus_one_draws_one_seed_a_prompt(tmp_path):
    from sana_cli.generation import plan_jobs

    jobs = plan_jobs([("a cat", {}), ("a dog", {})], {}, {"seed": -1, "num": 2}, dry_run=True, check=lambda s: None,
                     plan_paths=lambda *args: [])  # a dry run asks for the paths only to say which exist
    for _, _, seeds, _ in jobs:
        assert 0 <= seeds[0] < 2**31 and seeds[1] == seeds[0] + 1


# -- LoRA arguments -----------------------------------------------------------------------------------------------

def _safetensors(path, names):
    from safetensors.numpy import save_file

    save_file({name: np.ones((2, 2), dtype=np.float32) for name in names}, str(path))
    return path


LORA_KEYS = ["transformer.blocks.0.attn1.to_q.lora_A.weight", "transformer.blocks.0.attn1.to_q.lora_B.weight"]


def test_lora_folder_scale_and_path_with_colons(tmp_path):
    from sana.lora import parse_lora_arg

    folder = tmp_path / "style"
    folder.mkdir()
    weights = _safetensors(folder / "pytorch_lora_weights.safetensors", LORA_KEYS)
    assert parse_lora_arg(str(folder)) == (weights, 1.0)
    assert parse_lora_arg(f"{folder}:0.8") == (weights, 0.8)
    odd = tmp_path / "a:b.safetensors"
    _safetensors(odd, LORA_KEYS)
    assert parse_lora_arg(str(odd)) == (odd, 1.0)
    with pytest.raises(UsageError, match="the scale 'strong' is not a number"):
        parse_lora_arg(f"{weights}:strong")
    with pytest.raises(UsageError, match="not a finite number"):
        parse_lora_arg(f"{weights}:nan")


def test_what_is_not_a_lora_says_what_to_pass(tmp_path):
    from sana.lora import parse_lora_arg

    run = tmp_path / "run"
    step = run / "checkpoints" / "step-000500"
    step.mkdir(parents=True)
    (run / "train_config.json").write_text(json.dumps({"mode": "lora", "data": "my clips"}))
    (step / "state.json").write_text("{}")
    _safetensors(step / "weights.safetensors", ["blocks.0.attn1.to_q.lora_A.default.weight"])
    for arg in (step, step / "weights.safetensors"):
        with pytest.raises(SanaError, match="is a training checkpoint") as info:
            parse_lora_arg(str(arg))
        assert "pytorch_lora_weights.safetensors" in info.value.hint
        assert f"sana finetune 'my clips' --out {run} --resume" in info.value.hint  # the run's own data folder
    with pytest.raises(SanaError, match="without an exported LoRA"):
        parse_lora_arg(str(run))
    (run / "train_config.json").write_text(json.dumps({"mode": "full"}))
    with pytest.raises(SanaError, match="full fine-tuning run") as info:
        parse_lora_arg(str(run))
    assert "--model" in info.value.hint
    full = _safetensors(tmp_path / "dit.safetensors", ["blocks.0.attn1.to_q.weight"])
    with pytest.raises(SanaError, match="holds no LoRA tensors .* such as 'blocks.0.attn1.to_q.weight'") as info:
        parse_lora_arg(str(full))
    assert "--transformer" in info.value.hint
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"x")
    with pytest.raises(SanaError, match="PyTorch checkpoint") as info:
        parse_lora_arg(str(pth))
    assert "--transformer" in info.value.hint


# -- output names -------------------------------------------------------------------------------------------------

def _plan(prompts: list[str], out: str | None, *, force: bool, clips: bool = False, **flags):
    from sana.outputs import plan_clip_paths, plan_output_paths
    from sana_cli.generation import plan_jobs

    def plan_paths(out, prompt, seeds, index_start, taken):
        if clips:
            return plan_clip_paths(out, prompt=prompt, seeds=seeds, force=force, index_start=index_start, taken=taken)
        return plan_output_paths(out, prompt=prompt, seeds=seeds, force=force, index_start=index_start, taken=taken)

    jobs = plan_jobs([(p, {}) for p in prompts], {}, {"out": out, **flags}, dry_run=False, check=lambda s: None,
                     plan_paths=plan_paths)
    return [path for *_, paths in jobs for path in paths]


@pytest.mark.parametrize("clips", [False, True], ids=["images", "clips"])
def test_forty_prompts_sharing_their_first_words(tmp_path, clips):
    prompts = [f"a highly detailed photograph of a lighthouse on a cliff at dawn, variant {i}" for i in range(40)]
    out = str(tmp_path / "out")  # no suffix and several outputs: a directory
    paths = _plan(prompts, out, force=False, seed=7, clips=clips)
    assert len(set(paths)) == 40 and all(p.parent == tmp_path / "out" for p in paths)
    ext = ".mp4" if clips else ".png"
    # each prompt its own name: the slug they share and a hash of the whole prompt
    assert [p.name for p in paths[:3]] == [f"{prompt_stem(p)}-7{ext}" for p in prompts[:3]]
    # the same names whatever is on disk: a rerun refuses before any work, --force plans the same files
    paths[1].parent.mkdir()
    paths[1].write_bytes(b"old")
    with pytest.raises(SanaError, match=re.escape(f"{paths[1]} exists")):
        _plan(prompts, out, force=False, seed=7, clips=clips)
    assert _plan(prompts, out, force=True, seed=7, clips=clips) == paths


def test_bare_output_name_is_a_file_error_for_one_output_and_a_directory_for_several(tmp_path):
    with pytest.raises(UsageError, match="no image suffix"):
        _plan(["a cat"], str(tmp_path / "out"), force=False, seed=1)
    assert _plan(["a cat"], str(tmp_path / "out"), force=False, seed=1, num=2) == [
        tmp_path / "out" / "a-cat-1.png", tmp_path / "out" / "a-cat-2.png"]
    # the same prompt and seed twice in one run: made unique, in order
    assert _plan(["a cat", "a cat"], str(tmp_path) + "/", force=False, seed=1) == [
        tmp_path / "a-cat-1.png", tmp_path / "a-cat-1-2.png"]


def test_ctrl_c_in_any_command_says_it_was_interrupted(tmp_path):
    """A command without its own Ctrl-C report (here `sana shapes score`) still ends on one line saying so, exit
    130: Click turns the KeyboardInterrupt into an exit code, which printed nothing."""
    import os
    import signal
    import subprocess

    from sana.embedded import embedded_model_dir
    from tests.cli_helpers import sana_executable

    if embedded_model_dir("nano") is None:
        pytest.skip("no nano model in this installation")
    proc = subprocess.Popen([sana_executable(), "shapes", "score", "-m", "nano", "--num", "400"], cwd=tmp_path,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "NO_COLOR": "1", "SANA_THREADS": "1"})
    lines = []
    for line in proc.stderr:  # interrupted once it is scoring, so the signal lands inside the command
        lines.append(line.rstrip("\n"))
        if line.startswith("scoring"):
            proc.send_signal(signal.SIGINT)
            break
    lines += [line.rstrip("\n") for line in proc.stderr if line.strip()]
    proc.wait(timeout=120)
    assert proc.returncode == 130, lines
    assert lines[-1] == "error: interrupted" and not any("Traceback" in line for line in lines), lines
