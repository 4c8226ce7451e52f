"""The nano model's parts: tokenizer, autoencoder and its training loop, and the diffusers-format directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sana.errors import SanaError
from sana.nano import build
from sana.nano.autoencoder import VaeTrainConfig, render_batch, save_vae, train_vae, vae_config
from sana.nano.shapes import render, sample_scenes
from sana.text import COMPLEX_HUMAN_INSTRUCTION
from tests.cli_helpers import assert_one_line_error, run_sana

TINY_TRAINING = VaeTrainConfig(steps=2, batch=2, eval_images=4, log_every=1)


@pytest.fixture(scope="module")
def trained_vae(tmp_path_factory):
    vae, report = train_vae(TINY_TRAINING, device="cpu")
    folder = tmp_path_factory.mktemp("vae")
    save_vae(vae, report, folder)
    return vae, report, folder


@pytest.fixture(scope="module")
def nano_dir(trained_vae, tmp_path_factory):
    path = tmp_path_factory.mktemp("nano") / "model"
    result = build.write_nano_model(path, trained_vae[2] / "vae", seed=0)
    return path, result


# -- tokenizer -----------------------------------------------------------------------------------------------

def test_every_grammar_word_is_one_token_and_no_token_spans_words(tmp_path):
    tokenizer = build.build_tokenizer(tmp_path)
    vocab = tokenizer.get_vocab()
    assert not [t for t in vocab if "\u2581" in t[1:]]  # "▁" only ever leads a token
    for word in build.grammar_words():
        assert len(tokenizer.encode(" " + word, add_special_tokens=False)) == 1, word
    caption = "a large yellow triangle at the bottom and a small purple circle at the top on a gray background"
    assert len(tokenizer.encode(caption, add_special_tokens=False)) == len(caption.split())
    instruction = "\n".join(COMPLEX_HUMAN_INSTRUCTION)
    assert len(tokenizer.encode(instruction)) < 200  # a token a word, not bytes


# -- autoencoder ---------------------------------------------------------------------------------------------

def test_render_batch_matches_the_reference_renderer():
    scenes = sample_scenes(16, 9, holdout=())
    pixels = ((render_batch(scenes) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(pixels, np.stack([render(s) for s in scenes]))


def test_vae_config_gives_16x_compression_to_8_channels():
    from diffusers import AutoencoderDC

    vae = AutoencoderDC(**vae_config()).eval()
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 256, 256)).latent
        assert latents.shape == (1, build.LATENT_CHANNELS, build.LATENT_SIDE, build.LATENT_SIDE)
        assert vae.decode(latents).sample.shape == (1, 3, 256, 256)


def test_training_saves_weights_scale_and_loss_curve(trained_vae):
    vae, report, folder = trained_vae
    assert report.steps_done == 2 and [row["step"] for row in report.losses] == [0, 1]
    assert all(np.isfinite(row["loss"]) for row in report.losses)
    assert 0 < report.scaling_factor and vae.config.scaling_factor == report.scaling_factor
    saved = json.loads((folder / "vae" / "config.json").read_text())
    assert saved["scaling_factor"] == pytest.approx(report.scaling_factor) and saved["latent_channels"] == 8
    log = json.loads((folder / "vae-train.json").read_text())
    assert log["steps_done"] == 2 and len(log["losses"]) == 2 and log["config"]["holdout"]


def test_training_stops_at_the_time_limit():
    _, report = train_vae(VaeTrainConfig(steps=1000, batch=1, eval_images=2, max_seconds=0.0), device="cpu")
    assert report.steps_done == 0


# -- the directory -------------------------------------------------------------------------------------------

def test_directory_has_the_diffusers_layout_and_fits_the_budget(nano_dir):
    path, result = nano_dir
    index = json.loads((path / "model_index.json").read_text())
    assert index["_class_name"] == "SanaPipeline"
    assert index["text_encoder"] == ["transformers", "Gemma2Model"]
    assert index["vae"] == ["diffusers", "AutoencoderDC"]
    assert index["transformer"] == ["diffusers", "SanaTransformer2DModel"]
    transformer = json.loads((path / "transformer" / "config.json").read_text())
    text = json.loads((path / "text_encoder" / "config.json").read_text())
    assert transformer["caption_channels"] == text["hidden_size"] == build.TEXT_HIDDEN
    assert transformer["sample_size"] == build.LATENT_SIDE and transformer["interpolation_scale"] == 1.0
    scheduler = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "flow_prediction" and scheduler["use_flow_sigmas"]
    assert result.total_bytes == sum(build.directory_sizes(path).values()) <= build.SIZE_BUDGET
    assert set(result.sizes) == {*build.COMPONENTS, "index"}


def test_diffusers_loads_and_runs_it(nano_dir):
    from diffusers import SanaPipeline

    pipe = SanaPipeline.from_pretrained(nano_dir[0], dtype=torch.float32)
    image = pipe("a small red circle on the left on a white background", num_inference_steps=2, height=256, width=256,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (256, 256)


def test_sana_gen_runs_it(nano_dir, tmp_path):
    out = tmp_path / "nano.png"
    result = run_sana("gen", "a large blue square at the top on a black background", "--model", str(nano_dir[0]),
                      "--steps", "2", "--res", "256", "--seed", "1", "--device", "cpu", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (256, 256)


def test_built_in_nano_model_is_the_default_when_nothing_is_downloaded(nano_dir, tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "SANA_NANO_MODEL": str(nano_dir[0])}
    prompt = "a small red square on the left on a gray background"
    default = run_sana("gen", prompt, "--steps", "2", "--seed", "3", "--device", "cpu", "-o", str(tmp_path / "a.png"), env=env)
    assert default.returncode == 0, default.stderr
    assert "built-in nano model" in default.stderr
    named = run_sana("gen", prompt, "--model", "nano", "--steps", "2", "--seed", "3", "--device", "cpu",
                     "-o", str(tmp_path / "b.png"), env=env)
    assert named.returncode == 0, named.stderr
    assert "built-in" not in named.stderr
    a, b = (np.asarray(Image.open(tmp_path / name)) for name in ("a.png", "b.png"))
    assert a.shape == (256, 256, 3) and np.array_equal(a, b)

    listing = run_sana("models", "list", env=env)
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in listing.stdout.splitlines() if "│" in line]
    assert next(row for row in rows if row[0] == "nano")[4] == "yes", listing.stdout
    pulled = run_sana("models", "pull", "nano", env=env)  # nothing to pull, and no error: scripts chain on it
    assert pulled.returncode == 0 and "ships inside the package" in pulled.stderr, pulled.stderr


def test_an_installation_without_the_nano_model_says_so(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "SANA_NANO_MODEL": str(tmp_path / "absent")}
    named = run_sana("gen", "a large red circle in the center on a white background", "--model", "nano", env=env)
    assert "nano is not included in this installation" in assert_one_line_error(named)
    default = run_sana("gen", "a large red circle in the center on a white background", env=env)
    assert "no model is downloaded" in assert_one_line_error(default)


def test_score_command_runs_a_model_end_to_end(nano_dir, tmp_path):
    grid, rows = tmp_path / "grid.png", tmp_path / "rows.jsonl"
    result = run_sana("shapes", "score", "--model", str(nano_dir[0]), "--num", "2", "--num-heldout", "1", "--steps", "1",
                      "--device", "cpu", "--out", str(grid), "--rows", str(rows))
    assert result.returncode == 0, result.stderr
    for name in ("one-object", "two-object", "held-out", "fully correct"):
        assert name in result.stdout
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    assert [line["set"] for line in lines] == ["one-object", "two-object", "held-out"]
    assert Image.open(grid).size == (3 * 136, 136)  # three framed 128 px tiles
    refused = run_sana("shapes", "score", "--model", str(nano_dir[0]), "--num", "2", "--out", str(grid))
    assert refused.returncode == 2 and "exists" in assert_one_line_error(refused)


def test_weights_and_text_encoder_carry_over(nano_dir, trained_vae, tmp_path):
    path, _ = nano_dir
    again = tmp_path / "again"
    build.write_nano_model(again, trained_vae[0], transformer=path, text_from=path, seed=99)
    for component in ("transformer", "text_encoder"):
        from safetensors.torch import load_file

        name = "model.safetensors" if component == "text_encoder" else "diffusion_pytorch_model.safetensors"
        first, second = load_file(path / component / name), load_file(again / component / name)
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first), component
    assert (path / "tokenizer" / "tokenizer.json").read_text() == (again / "tokenizer" / "tokenizer.json").read_text()


def test_builds_are_refused_where_they_cannot_work(nano_dir, trained_vae, tmp_path):
    with pytest.raises(SanaError, match="not empty"):
        build.write_nano_model(nano_dir[0], trained_vae[0])
    from diffusers import AutoencoderDC

    wrong = AutoencoderDC(**{**vae_config(), "latent_channels": 16})
    with pytest.raises(SanaError, match="latents"):
        build.write_nano_model(tmp_path / "wrong", wrong)


def test_build_command(trained_vae, tmp_path):
    out = tmp_path / "built"
    result = run_sana("shapes", "build", str(out), "--vae", str(trained_vae[2] / "vae"))
    assert result.returncode == 0, result.stderr
    assert "transformer" in result.stdout and "budget 15" in result.stdout
    assert (out / "model_index.json").is_file()
    configs = [json.loads(path.read_text()) for path in out.glob("*/config.json")]
    assert len(configs) == 3 and not any("_name_or_path" in c for c in configs)  # no folder of this machine is named
    refused = run_sana("shapes", "build", str(out), "--vae", str(trained_vae[2] / "vae"))
    assert refused.returncode == 2 and "not empty" in assert_one_line_error(refused)


def test_train_vae_command(tmp_path):
    out = tmp_path / "ae"
    result = run_sana("shapes", "train-vae", str(out), "--steps", "1", "--batch", "1", "--eval-images", "2",
                      "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(out / "vae")
    assert "scaling_factor" in result.stderr and (out / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((out / "vae-train.json").read_text())["steps_done"] == 1

    # Going on from it: the new run starts from its weights (one step at a tiny rate keeps them close).
    more = tmp_path / "more"
    result = run_sana("shapes", "train-vae", str(more), "--steps", "1", "--batch", "1", "--eval-images", "2",
                      "--device", "cpu", "--start-from", str(out), "--seed", "1", "--lr", "1e-9")
    assert result.returncode == 0, result.stderr
    from safetensors.torch import load_file

    before = load_file(str(out / "vae" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(more / "vae" / "diffusion_pytorch_model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-5) for k in before)


@pytest.mark.parametrize("case, message", [("missing", "no autoencoder there"),
                                           ("video", "holds AutoencoderDC, not the AutoencoderKLWan")])
def test_train_vae_start_from_is_checked_before_any_work(tmp_path, case, message):
    start = tmp_path / "start"
    if case == "video":
        (start / "vae").mkdir(parents=True)
        (start / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderDC"}))
    args = ["--video"] if case == "video" else []
    result = run_sana("shapes", "train-vae", str(tmp_path / "out"), "--start-from", str(start), *args)
    assert result.returncode != 0 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
