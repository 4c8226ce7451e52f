"""`sana gen` / `sana sprint` through the installed entry point, image for image against diffusers."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli_helpers import assert_one_line_error, psnr, run_sana
from tests.tiny_pipeline import build_pipeline, pag_pipeline_from

COMMON = ("--device", "cpu", "--dtype", "fp32")


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    built = {}
    for kind in ("sana", "sana1.5", "4k", "sprint"):
        path = tmp_path_factory.mktemp(f"tiny-{kind}")
        built[kind] = (build_pipeline(path, kind, seed=len(built)), path)
    return built


def _generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


@pytest.mark.parametrize("kind", ["sana", "sana1.5", "4k"])
def test_gen_matches_sana_pipeline(pipelines, kind, tmp_path):
    pipe, model_dir = pipelines[kind]
    out = tmp_path / "img.png"
    result = run_sana("gen", "A Red Circle on the left", "--model", str(model_dir), "--res", "64x96", "--steps", "6",
                      "--cfg", "4.5", "--seed", "11", "--negative", "blurry", "-o", str(out), *COMMON)
    assert result.returncode == 0, result.stderr
    ref = pipe("A Red Circle on the left", negative_prompt="blurry", num_inference_steps=6, guidance_scale=4.5,
               width=64, height=96, generator=_generator(11), use_resolution_binning=False).images[0]
    ours = Image.open(out)
    assert ours.size == (64, 96)
    assert psnr(ours.convert("RGB"), ref) >= 45


def test_flow_euler_matches_diffusers(pipelines, tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, SanaPipeline

    pipe, model_dir = pipelines["sana"]
    euler = SanaPipeline(**{**pipe.components, "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0)})
    out = tmp_path / "euler.png"
    result = run_sana("gen", "a blue square", "--model", str(model_dir), "--res", "64", "--steps", "5",
                      "--sampler", "flow-euler", "--seed", "3", "-o", str(out), *COMMON)
    assert result.returncode == 0, result.stderr
    ref = euler("a blue square", num_inference_steps=5, width=64, height=64, generator=_generator(3),
                use_resolution_binning=False).images[0]
    assert psnr(Image.open(out).convert("RGB"), ref) >= 45


def test_pag_matches_sana_pag_pipeline(pipelines, tmp_path):
    pipe, model_dir = pipelines["sana"]
    pag_pipe = pag_pipeline_from(pipe, layer=1)
    out = tmp_path / "pag.png"
    result = run_sana("gen", "a green triangle", "--model", str(model_dir), "--res", "64", "--steps", "5",
                      "--cfg", "5.0", "--pag", "2.0", "--pag-layer", "1", "--seed", "5", "-o", str(out), *COMMON)
    assert result.returncode == 0, result.stderr
    ref = pag_pipe("a green triangle", num_inference_steps=5, guidance_scale=5.0, pag_scale=2.0, width=64, height=64,
                   generator=_generator(5), use_resolution_binning=False).images[0]
    assert psnr(Image.open(out).convert("RGB"), ref) >= 45


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_sprint_matches_sana_sprint_pipeline(pipelines, steps, tmp_path):
    pipe, model_dir = pipelines["sprint"]
    result = run_sana("sprint", "a cat", "--model", str(model_dir), "--res", "64x96", "--steps", str(steps),
                      "--guidance", "4.5", "--seed", "9", "--num", "2", "-o", str(tmp_path) + "/", *COMMON)
    assert result.returncode == 0, result.stderr
    written = sorted(tmp_path.glob("*.png"))
    assert len(written) == 2
    for path, seed in zip(sorted(written, key=lambda p: "-9." not in p.name), (9, 10)):
        ref = pipe("a cat", num_inference_steps=steps, guidance_scale=4.5, width=64, height=96, generator=_generator(seed),
                   use_resolution_binning=False, intermediate_timesteps=1.3 if steps == 2 else None).images[0]
        assert psnr(Image.open(path).convert("RGB"), ref) >= 45, path.name


def test_sprint_timesteps_match_diffusers_and_replay_from_the_record(pipelines, tmp_path):
    """--max-timesteps / --intermediate-timesteps are diffusers' SanaSprintPipeline arguments; the record keeps
    them, so --from gives the same pixels; a negative prompt (which Sprint does not take) is left out of it."""
    pipe, model_dir = pipelines["sprint"]
    out, again = tmp_path / "first.png", tmp_path / "again.png"
    (tmp_path / "line.jsonl").write_text('{"prompt": "a cat", "negative": "blurry"}\n')
    result = run_sana("sprint", "--prompts", str(tmp_path / "line.jsonl"), "--model", str(model_dir), "--res", "64",
                      "--steps", "2", "--max-timesteps", "1.4", "--intermediate-timesteps", "0.9", "--seed", "4",
                      "-o", str(out), *COMMON)
    assert result.returncode == 0, result.stderr
    assert "SANA-Sprint takes no negative prompt" in result.stderr
    ref = pipe("a cat", num_inference_steps=2, guidance_scale=4.5, width=64, height=64, generator=_generator(4),
               use_resolution_binning=False, max_timesteps=1.4, intermediate_timesteps=0.9).images[0]
    assert psnr(Image.open(out).convert("RGB"), ref) >= 45
    meta = json.loads(run_sana("info", str(out), "--json").stdout)
    assert meta["extra"]["max_timesteps"] == 1.4 and meta["extra"]["intermediate_timesteps"] == 0.9
    assert meta["negative_prompt"] == ""
    result = run_sana("sprint", "--from", str(out), "-o", str(again), *COMMON)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(again)))


def test_skip_existing_refuses_an_output_made_with_other_settings(pipelines, tmp_path):
    _, model_dir = pipelines["sana"]
    args = ("gen", "a red dog", "--model", str(model_dir), "--res", "64", "--seed", "3", "-o", f"{tmp_path}/",
            *COMMON)
    assert run_sana(*args, "--steps", "2").returncode == 0
    assert "nothing to make" in run_sana(*args, "--steps", "2", "--skip-existing").stderr
    for changed, held in ((("--steps", "3"), "2 steps, not 3"), (("--cfg", "7"), "guidance 4.5, not 7"),
                          (("--res", "96"), "64x64, not 96x96"), (("--negative", "blurry"), "another negative")):
        message = assert_one_line_error(run_sana(*args, "--steps", "2", *changed, "--skip-existing"))
        assert "is in the way: it was made with" in message and held in message, message


def test_from_replays_the_same_pixels_and_flags_win(pipelines, tmp_path):
    _, model_dir = pipelines["sana1.5"]
    first = tmp_path / "first.png"
    assert run_sana("gen", "a yellow star", "--model", str(model_dir), "--res", "64", "--steps", "4", "--seed", "21",
                    "-o", str(first), *COMMON).returncode == 0
    again = tmp_path / "again.png"
    result = run_sana("gen", "--from", str(first), "-o", str(again), *COMMON)
    assert result.returncode == 0, result.stderr
    assert np.asarray(Image.open(first)).tolist() == np.asarray(Image.open(again)).tolist()
    other_seed = tmp_path / "other.png"
    assert run_sana("gen", "--from", str(first), "--seed", "22", "-o", str(other_seed), *COMMON).returncode == 0
    assert np.asarray(Image.open(first)).tolist() != np.asarray(Image.open(other_seed)).tolist()
    meta = json.loads(run_sana("info", str(other_seed), "--json").stdout)
    assert meta["seed"] == 22 and meta["prompt"] == "a yellow star" and meta["steps"] == 4


def test_outputs_never_overwrite_without_force(pipelines, tmp_path):
    _, model_dir = pipelines["sana"]
    out = tmp_path / "keep.png"
    args = ("gen", "a dog", "--model", str(model_dir), "--res", "64", "--steps", "2", "--seed", "1", "-o", str(out), *COMMON)
    assert run_sana(*args).returncode == 0
    before = out.read_bytes()
    assert_one_line_error(run_sana(*args[:-len(COMMON)], "--seed", "2", *COMMON))
    assert out.read_bytes() == before
    assert run_sana(*args, "--force").returncode == 0
    # default names do not depend on the disk: a rerun refuses before any work, --force writes the same file
    in_dir = ("gen", "a dog", "--model", str(model_dir), "--res", "64", "--steps", "2", "--seed", "1",
              "-o", str(tmp_path / "dir") + "/", *COMMON)
    assert run_sana(*in_dir).returncode == 0
    written = tmp_path / "dir" / "a-dog-1.png"
    before = written.stat().st_mtime_ns
    assert "a-dog-1.png exists" in assert_one_line_error(run_sana(*in_dir))
    assert written.stat().st_mtime_ns == before
    assert run_sana(*in_dir, "--force").returncode == 0
    assert list((tmp_path / "dir").glob("*.png")) == [written]


def test_prompts_sharing_their_first_words_get_unique_names_and_reruns_the_same(pipelines, tmp_path):
    _, model_dir = pipelines["sana"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a highly detailed photograph of a lighthouse on a cliff, take {i}\n" for i in range(3)))
    args = ("gen", "--prompts", str(prompts), "--model", str(model_dir), "--res", "64", "--steps", "1", "--seed", "7",
            "-o", str(tmp_path / "out"), *COMMON)
    result = run_sana(*args)
    assert result.returncode == 0, result.stderr
    from sana.outputs.naming import prompt_stem

    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert names == sorted(f"{prompt_stem(p)}-7.png" for p in prompts.read_text().splitlines())
    assert len(set(names)) == 3
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.png")}
    assert "exists; use --force" in assert_one_line_error(run_sana(*args))
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.png")} == stamps
    assert run_sana(*args, "--force").returncode == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == names
    prompts_in = [json.loads(run_sana("info", str(tmp_path / "out" / name), "--json").stdout)["prompt"] for name in names]
    assert sorted(prompts_in) == sorted(prompts.read_text().splitlines())


def test_habits_random_seed_guidance_lora_folder_and_notices(pipelines, tmp_path):
    from diffusers import SanaTransformer2DModel

    from tests.test_lora import save_lora

    _, model_dir = pipelines["sana"]
    lora = save_lora(SanaTransformer2DModel.from_pretrained(model_dir / "transformer"), tmp_path / "lora")
    out = tmp_path / "habits.png"
    long_prompt = "a red circle " * 200
    result = run_sana("gen", long_prompt, "--model", str(model_dir), "--res", "64", "--steps", "1", "--seed", "-1",
                      "--guidance", "3", "--lora", "lora:0.5", "-o", str(out), *COMMON, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    meta = json.loads(run_sana("info", str(out), "--json").stdout)
    drawn = re.search(r"seed -1: drew (\d+)", result.stderr)
    assert drawn and meta["seed"] == int(drawn.group(1)) and 0 <= meta["seed"] < 2**31
    assert meta["guidance"] == 3.0
    # given relative to the folder it ran in, recorded absolute: --from finds it from anywhere
    assert meta["loras"][0]["path"] == str(lora.resolve()) and meta["loras"][0]["scale"] == 0.5
    assert "LoRA applied: lora/pytorch_lora_weights.safetensors (scale 0.5)" in " ".join(result.stderr.split())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    replay = run_sana("gen", "--from", str(out), "--dry-run", *COMMON, cwd=elsewhere)
    assert replay.returncode == 0, replay.stderr
    assert "the rest is cut" in result.stderr
    big = run_sana("gen", "x", "--model", str(model_dir), "--res", "1024", "--dry-run", *COMMON)
    assert big.returncode == 0, big.stderr
    assert "far above" in big.stderr


def test_prompts_file_runs_every_line_in_one_process(pipelines, tmp_path):
    _, model_dir = pipelines["sana"]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "a red circle", "seed": 1}\n{"prompt": "a blue square", "seed": 2, "steps": 3}\n')
    result = run_sana("gen", "--prompts", str(prompts), "--model", str(model_dir), "--res", "64", "--steps", "2",
                      "-o", str(tmp_path / "out") + "/", *COMMON)
    assert result.returncode == 0, result.stderr
    files = sorted((tmp_path / "out").glob("*.png"))
    assert len(files) == 2
    steps = sorted(json.loads(run_sana("info", str(f), "--json").stdout)["steps"] for f in files)
    assert steps == [2, 3]


def test_prompts_file_lines_write_their_own_outputs(pipelines, tmp_path):
    _, model_dir = pipelines["sana"]
    first, second = tmp_path / "first.png", tmp_path / "second.png"
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"prompt": "a red circle", "seed": 1, "out": str(first)}, {"prompt": "a red circle", "seed": 2, "out": str(second)}]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_sana("gen", "--prompts", str(prompts), "--model", str(model_dir), "--res", "64", "--steps", "2", *COMMON)
    assert result.returncode == 0, result.stderr
    assert sorted(tmp_path.glob("*.png")) == [first, second]
    # Two lines naming one file: refused before anything loads, nothing written.
    prompts.write_text("".join(json.dumps(dict(line, out=str(tmp_path / "same.png"))) + "\n" for line in lines))
    assert "same.png" in assert_one_line_error(run_sana("gen", "--prompts", str(prompts), "--model", str(model_dir),
                                                        *COMMON))
    assert not (tmp_path / "same.png").exists()


def test_size_is_snapped_with_a_notice(pipelines, tmp_path):
    _, model_dir = pipelines["sana"]
    out = tmp_path / "snap.png"
    result = run_sana("gen", "a dog", "--model", str(model_dir), "--res", "70x100", "--steps", "2", "--seed", "1",
                      "-o", str(out), *COMMON)
    assert result.returncode == 0, result.stderr
    assert "snapped to 64x96" in result.stderr
    assert Image.open(out).size == (64, 96)


@pytest.mark.parametrize("args", [
    ("--model", "no-such-model"),
    ("--sampler", "ddim"),
    ("--res", "huge"),
    ("--dtype", "fp8"),
    ("--lora", "missing-lora.safetensors"),
    ("--fp8",),
    ("--pag", "2", "--pag-layer", "99"),
], ids=["unknown-model", "sampler", "res", "dtype", "lora", "fp8-on-the-cpu", "pag-layer-past-the-last-block"])
def test_bad_input_is_one_line(pipelines, args, tmp_path):
    _, model_dir = pipelines["sana"]
    base = ["gen", "a dog", "--model", str(model_dir), "--steps", "2", "-o", str(tmp_path / "x.png"), "--device", "cpu"]
    result = run_sana(*base, *args)
    assert_one_line_error(result)
    assert not list(tmp_path.glob("*.png"))


def test_sprint_and_gen_refuse_each_others_models(pipelines, tmp_path):
    assert "sana sprint" in assert_one_line_error(run_sana("gen", "x", "--model", str(pipelines["sprint"][1]), *COMMON))
    assert "sana gen" in assert_one_line_error(run_sana("sprint", "x", "--model", str(pipelines["sana"][1]), *COMMON))


def test_missing_component_is_one_line(pipelines, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(pipelines["sana"][1], broken)
    shutil.rmtree(broken / "vae")
    message = assert_one_line_error(run_sana("gen", "x", "--model", str(broken), "--res", "64", "-o", str(tmp_path / "o.png"), *COMMON))
    assert "vae" in message
    assert not (tmp_path / "o.png").exists()


def test_nan_output_is_a_clear_error_and_leaves_no_file(pipelines, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-model"
    shutil.copytree(pipelines["sana"][1], broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if k.endswith("proj_out.weight"))
    state[key] = torch.full_like(state[key], float("inf"))
    save_file(state, weights)
    message = assert_one_line_error(run_sana("gen", "x", "--model", str(broken), "--res", "64", "--steps", "2",
                                             "-o", str(tmp_path / "nan.png"), *COMMON), after_progress=True)
    assert "NaN" in message
    assert not list(tmp_path.glob("*.png"))


def test_lora_from_diffusers_gives_the_diffusers_image(tmp_path):
    from diffusers import SanaPipeline, SanaTransformer2DModel

    from tests.test_lora import save_lora

    model_dir = tmp_path / "model"
    build_pipeline(model_dir, "sana1.5", seed=7)
    lora = save_lora(SanaTransformer2DModel.from_pretrained(model_dir / "transformer"), tmp_path / "lora")
    pipe = SanaPipeline.from_pretrained(model_dir)
    pipe.load_lora_weights(lora.parent, weight_name=lora.name, adapter_name="style")
    pipe.set_adapters(["style"], adapter_weights=[0.8])
    ref = pipe("a red circle", num_inference_steps=4, width=64, height=64, generator=_generator(4),
               use_resolution_binning=False).images[0]
    out = tmp_path / "lora.png"
    result = run_sana("gen", "a red circle", "--model", str(model_dir), "--res", "64", "--steps", "4", "--seed", "4",
                      "--lora", f"{lora}:0.8", "-o", str(out), *COMMON)
    assert result.returncode == 0, result.stderr
    assert psnr(Image.open(out).convert("RGB"), ref) >= 45
    plain = tmp_path / "plain.png"
    assert run_sana("gen", "a red circle", "--model", str(model_dir), "--res", "64", "--steps", "4", "--seed", "4",
                    "-o", str(plain), *COMMON).returncode == 0
    assert psnr(Image.open(plain).convert("RGB"), ref) < 40  # the LoRA matters
    meta = json.loads(run_sana("info", str(out), "--json").stdout)
    assert meta["loras"][0]["scale"] == 0.8 and len(meta["loras"][0]["sha256"]) == 64
    assert meta["model"] == str(model_dir.resolve())  # a local folder recorded absolute: --from works anywhere

    # A prompts file's line may name its own LoRA: one process, each line with its own set (the model loaded again).
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "a red circle", "seed": 4, "lora": f"{lora}:0.8", "out": "with.png"})
                       + "\n" + json.dumps({"prompt": "a red circle", "seed": 4, "out": "without.png"}) + "\n")
    result = run_sana("gen", "--prompts", str(prompts), "--model", str(model_dir), "--res", "64", "--steps", "4",
                      *COMMON, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert psnr(Image.open(tmp_path / "with.png").convert("RGB"), ref) >= 45
    assert np.array_equal(np.asarray(Image.open(tmp_path / "without.png")), np.asarray(Image.open(plain)))
    assert json.loads(run_sana("info", str(tmp_path / "without.png"), "--json").stdout)["loras"] == []
    prompts.write_text(json.dumps({"prompt": "x", "lora": "nofile.safetensors"}) + "\n")
    assert "nofile.safetensors" in assert_one_line_error(run_sana("gen", "--prompts", str(prompts), "--model",
                                                                  str(model_dir), *COMMON, cwd=tmp_path))

    # A replayed LoRA whose file changed since: the replay says so.
    with open(lora, "ab") as changed:
        changed.write(b" ")
    replay = run_sana("gen", "--from", str(out), "--dry-run", *COMMON)
    assert replay.returncode == 0 and "not the LoRA the replayed file recorded" in replay.stderr


def test_transformer_weights_from_an_nvlabs_checkpoint(pipelines, tmp_path):
    from tests.test_loading import nvlabs_state

    pipe, model_dir = pipelines["sana"]
    checkpoint = tmp_path / "finetune.pth"
    state = nvlabs_state(dict(pipe.transformer.state_dict()), pipe.transformer.config.num_layers, sprint=False)
    torch.save({"state_dict": state}, checkpoint)
    out = tmp_path / "pth.png"
    result = run_sana("gen", "a blue square", "--model", str(model_dir), "--transformer", str(checkpoint), "--res", "64",
                      "--steps", "3", "--seed", "2", "-o", str(out), *COMMON)
    assert result.returncode == 0, result.stderr
    ref = pipe("a blue square", num_inference_steps=3, width=64, height=64, generator=_generator(2),
               use_resolution_binning=False).images[0]
    assert psnr(Image.open(out).convert("RGB"), ref) >= 45
    assert json.loads(run_sana("info", str(out), "--json").stdout)["extra"]["transformer"] == str(checkpoint)
    missing = assert_one_line_error(run_sana("gen", "x", "--model", str(model_dir), "--transformer", str(tmp_path / "nope.pth"),
                                             *COMMON))
    assert "does not exist" in missing


def test_no_model_and_nothing_downloaded_names_what_to_pull(tmp_path):
    # An installation without the built-in nano model (with it, `sana gen` falls back to nano).
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "SANA_NANO_MODEL": str(tmp_path / "absent")}
    message = assert_one_line_error(run_sana("gen", "a dog", *COMMON, cwd=tmp_path, env=env))
    assert "sana models pull" in message


def test_dry_run_plans_4k_from_the_registry_without_weights(tmp_path):
    result = run_sana("gen", "x", "--model", "sana-1.6b-4k", "--res", "4096", "--max-vram", "8G", "--dry-run",
                      cwd=tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 0, result.stderr
    for expected in ("memory plan: sana-1.6b-4k at 4096x4096", "text encoder (2.61B params)",
                     "transformer (1.60B params)", "VAE decoder", "predicted peak", "tiles of"):
        assert expected in result.stdout, expected
    assert not (tmp_path / "hub").exists() and not list(tmp_path.rglob("*.png"))


def test_dry_run_of_a_local_model_writes_nothing(pipelines, tmp_path):
    _, model_dir = pipelines["sprint"]
    out = tmp_path / "never.png"
    result = run_sana("sprint", "a cat", "--model", str(model_dir), "--res", "64", "--memory", "low", "--dry-run",
                      "-o", str(out), *COMMON)
    assert result.returncode == 0, result.stderr
    assert "memory plan" in result.stdout and "fp32" in result.stdout
    assert not out.exists()
    # an output that is there already: the dry run says the real run would refuse it, and changes nothing
    out.write_bytes(b"mine")
    again = run_sana("sprint", "a cat", "--model", str(model_dir), "--res", "64", "--dry-run", "-o", str(out), *COMMON)
    assert again.returncode == 0 and "never.png exists: the run would refuse it without --force" in again.stderr
    assert out.read_bytes() == b"mine"


@pytest.mark.parametrize("args", [("--memory", "tiny"), ("--max-vram", "lots"), ("--max-vram", "1M")],
                         ids=["memory", "max-vram", "max-vram-too-small"])
def test_bad_memory_options_are_one_line(pipelines, args, tmp_path):
    _, model_dir = pipelines["sana"]
    message = assert_one_line_error(run_sana("gen", "a dog", "--model", str(model_dir), "-o", str(tmp_path / "x.png"),
                                             *args, *COMMON))
    assert args[0].lstrip("-").split("-")[-1] in message
    assert not list(tmp_path.glob("*.png"))


def test_the_memory_plan_is_recorded_in_the_image(pipelines, tmp_path):
    _, model_dir = pipelines["sana"]
    out = tmp_path / "plan.png"
    result = run_sana("gen", "a dog", "--model", str(model_dir), "--res", "64", "--steps", "2", "--seed", "1",
                      "-o", str(out), *COMMON)
    assert result.returncode == 0, result.stderr
    assert "memory:" in result.stderr  # the plan's one line before loading
    memory = json.loads(run_sana("info", str(out), "--json").stdout)["extra"]["memory"]
    assert memory["tier"] == "cpu" and memory["dtype"] == "fp32" and "predicted peak" in memory
