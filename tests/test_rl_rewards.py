"""RL rewards: the --reward grammar, checks before torch, plugins, the shapes reward's partial credit, CLIPScore and
PickScore on tiny random CLIP models against transformers' own forward, and the reward models in `sana models`."""

from __future__ import annotations

import importlib.util
import json
import shutil
import string
from pathlib import Path

import numpy as np
import pytest
import torch

from sana.errors import ModelNotFound, UsageError
from sana.rewards import plugins as rw
from tests.cli_helpers import assert_one_line_error, run_sana


# -- the --reward grammar ---------------------------------------------------------------------------------------

def test_parse_names_weights_folders_and_plugins(tmp_path):
    terms = rw.parse_rewards("shapes, pickscore:0.5 ,clip=/m/clip:2,plugins/mine.py:score:-1")
    assert [(t.name, t.weight, t.path, t.model_dir) for t in terms] == [
        ("shapes", 1.0, None, None), ("pickscore", 0.5, None, None), ("clip", 2.0, None, "/m/clip"),
        ("score", -1.0, "plugins/mine.py", None)]
    assert rw.parse_rewards("x.py:fn")[0].weight == 1.0


@pytest.mark.parametrize("spec,message", [
    ("pickscor", "did you mean pickscore"), ("", "names no reward"),
    ("shapes:heavy", r"^reward weight 'heavy' in 'shapes:heavy' is not a number$"),
    ("shapes:", "reward weight '' in 'shapes:' is not a number"), ("shapez:abc", r"unknown reward 'shapez' \("),
    ("shapes:0", "finite non-zero"), ("clip,clip:2", "names clip twice"), ("shapes=/dir", "only clip and pickscore"),
    ("x.py:fn:lots", "reward weight 'lots' in 'x.py:fn:lots' is not a number"),
    ("plugins/mine.txt:score", r"unknown reward 'plugins/mine.txt:score' \(use .* or path/file.py:function"),
])
def test_bad_reward_specs_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        rw.parse_rewards(spec)


def test_colons_in_folders_and_plugin_paths_are_not_weights():
    """Only a bare name or a number around the last colon makes a weight: Windows folders and dotted plugin
    paths keep theirs."""
    terms = rw.parse_rewards(r"clip=C:\models\clip, pickscore=D:\ps:0.5, C:\rewards\my.plug.py:score:2")
    assert [(t.name, t.weight, t.path, t.model_dir) for t in terms] == [
        ("clip", 1.0, None, r"C:\models\clip"), ("pickscore", 0.5, None, r"D:\ps"),
        ("score", 2.0, r"C:\rewards\my.plug.py", None)]


def test_plugin_checks_read_the_file_without_running_it(tmp_path):
    plugin = tmp_path / "mine.py"
    plugin.write_text("raise SystemExit('ran')\n\ndef score(images, prompts):\n    return images.mean((1, 2, 3))\n")
    rw.check_rewards(rw.parse_rewards(f"{plugin}:score"))  # parsed, never executed
    with pytest.raises(UsageError, match="defines no function 'other'.*functions there: score"):
        rw.check_rewards(rw.parse_rewards(f"{plugin}:other"))
    with pytest.raises(UsageError, match="reward plugin not found"):
        rw.check_rewards(rw.parse_rewards(f"{tmp_path / 'gone.py'}:score"))
    (tmp_path / "broken.py").write_text("def score(:\n")
    with pytest.raises(UsageError, match="cannot read the reward plugin"):
        rw.check_rewards(rw.parse_rewards(f"{tmp_path / 'broken.py'}:score"))


SIGNATURES = {
    "images-only": ("(images)", "it takes (images)"),
    "nothing": ("()", "it takes no positional arguments"),
    "required-keyword": ("(images, prompts, *, scale)", "keyword-only argument 'scale' has no default"),
    "four-required": ("(images, prompts, metadata, scale)", "it needs 4 positional arguments"),
}


@pytest.mark.parametrize("params,message", SIGNATURES.values(), ids=SIGNATURES.keys())
def test_a_plugin_that_cannot_take_a_rewards_arguments_is_refused_before_it_runs(tmp_path, params, message):
    plugin = tmp_path / "mine.py"
    plugin.write_text(f"raise SystemExit('ran')\n\ndef score{params}:\n    return 0\n")
    with pytest.raises(UsageError) as refused:
        rw.check_rewards(rw.parse_rewards(f"{plugin}:score"))
    assert message in str(refused.value) and "fn(images, prompts) or fn(images, prompts, metadata)" in str(refused.value)
    assert "\n" not in str(refused.value)


ACCEPTED = {
    "two": ("(images, prompts)", False),
    "three": ("(images, prompts, metadata)", True),
    "optional-third": ("(images, prompts, metadata=None)", True),
    "varargs": ("(*args)", True),
    "keyword-metadata": ("(images, prompts, *, metadata)", True),
    "optional-keyword": ("(images, prompts, *, scale=2.0)", False),
}


@pytest.mark.parametrize("params,passed", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_plugins_of_either_signature_are_called_with_what_they_take(tmp_path, params, passed):
    plugin = tmp_path / "mine.py"
    plugin.write_text(f"SEEN = []\ndef score{params}:\n    SEEN.append(locals())\n    return [1.0]\n")
    rw.check_rewards(rw.parse_rewards(f"{plugin}:score"))
    reward = rw.PluginReward(str(plugin), "score")
    assert reward(torch.zeros(1, 3, 2, 2), ["a"], [{"bonus": 1.0}]) == [1.0]
    seen = reward.fn.__globals__["SEEN"][0]
    metadata = seen["args"][2] if "args" in seen else seen.get("metadata")
    assert metadata == ([{"bonus": 1.0}] if passed else None), seen


def test_a_decorated_plugin_is_taken_on_trust_until_it_loads(tmp_path):
    """A decorator may give the function another signature: the pre-check does not judge it from the source."""
    plugin = tmp_path / "mine.py"
    plugin.write_text("import functools\n@functools.lru_cache\ndef score(images):\n    return 0\n")
    rw.check_rewards(rw.parse_rewards(f"{plugin}:score"))


def test_reward_paths_are_recorded_absolute_and_compared_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    spec = "shapes:1, mine.py:score:0.5,clip=models/clip"
    absolute = rw.with_absolute_paths(spec)
    assert absolute == f"shapes:1,{tmp_path.resolve() / 'mine.py'}:score:0.5,clip={tmp_path.resolve() / 'models/clip'}"
    assert rw.same_rewards(spec, absolute) and rw.same_rewards("./mine.py:score", f"{tmp_path}/mine.py:score")
    assert not rw.same_rewards("mine.py:score", "sub/mine.py:score")
    assert not rw.same_rewards("mine.py:score", "mine.py:score:2")


@pytest.mark.parametrize("name,package", [("hpsv2", "hpsv2"), ("imagereward", "ImageReward")])
def test_missing_reward_packages_are_named(name, package):
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed")
    with pytest.raises(UsageError, match=f"needs the {package} package"):
        rw.check_rewards(rw.parse_rewards(name))


# -- plugins and the weighted sum ---------------------------------------------------------------------------------

PLUGINS = """
import math
def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))
def with_meta(images, prompts, metadata):
    return [float(m.get("bonus", 0)) + len(p) for p, m in zip(prompts, metadata)]
def boom(images, prompts):
    raise RuntimeError("no GPU for the judge")
def nan(images, prompts):
    return [math.nan] * len(prompts)
def matrix(images, prompts):
    return images[:, :, 0, 0]
def words(images, prompts):
    return ["good"] * len(prompts)
"""


def test_weighted_sum_of_plugins_and_their_failures(tmp_path):
    (tmp_path / "plug.py").write_text(PLUGINS)
    images = torch.rand(3, 3, 8, 8)
    prompts, meta = ["a", "bb", "ccc"], [{}, {"bonus": 10}, {}]
    reward = rw.RewardSet(rw.parse_rewards(f"{tmp_path}/plug.py:brightness:2,{tmp_path}/plug.py:with_meta:0.5"), "cpu")
    total, parts = reward(images, prompts, meta)
    torch.testing.assert_close(parts["brightness"], images.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(parts["with_meta"], torch.tensor([1.0, 12.0, 3.0]))
    torch.testing.assert_close(total, 2 * parts["brightness"] + 0.5 * parts["with_meta"])
    for name, message in [("boom", "raised RuntimeError: no GPU for the judge"), ("nan", "NaN or infinity for 3 of 3"),
                          ("matrix", r"shape \(3, 3\) for 3 images"), ("words", "not numbers")]:
        with pytest.raises(rw.RewardError, match=message) as info:
            rw.RewardSet(rw.parse_rewards(f"{tmp_path}/plug.py:{name}"), "cpu")(images, prompts, meta)
        assert "\n" not in str(info.value)


# -- shapes ---------------------------------------------------------------------------------------------------------

def test_shapes_reward_gives_partial_credit_per_attribute():
    from sana.nano.shapes import ShapeObject, Scene, render
    from sana.rewards.shapes import ShapesScorer, shapes_score

    right = Scene((ShapeObject("large", "red", "circle", "left"), ShapeObject("small", "blue", "square", "right")), "white")
    caption = right.caption
    assert shapes_score(render(right), caption) == 1.0
    wrong_shape = Scene((ShapeObject("large", "red", "triangle", "left"), right.objects[1]), "white")
    assert shapes_score(render(wrong_shape), caption) == pytest.approx(9 / 10)  # one attribute of ten
    wrong_bg = Scene(right.objects, "black")
    assert shapes_score(render(wrong_bg), caption) == pytest.approx(9 / 10)
    one_missing = Scene(right.objects[:1], "white")
    assert shapes_score(render(one_missing), caption) == pytest.approx(6 / 10)  # 4 + background + no extras
    blank = np.full((256, 256, 3), 245, np.uint8)
    assert shapes_score(blank, caption) == pytest.approx(2 / 10)

    reward = rw.ShapesReward()
    images = torch.from_numpy(np.stack([render(right), render(wrong_shape)])).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(reward(images, [caption, caption], [{}, {}]), torch.tensor([1.0, 0.9]))
    pooled = ShapesScorer(workers=2)
    try:
        arrays = [render(s) for s in (right, wrong_shape, wrong_bg, one_missing)] * 4
        assert pooled(arrays, [caption] * 16) == ShapesScorer(workers=0)(arrays, [caption] * 16)
    finally:
        pooled.close()


def test_shapes_scorer_submits_to_its_workers_and_keeps_the_order():
    from sana.nano.shapes import render, sample_scenes
    from sana.rewards.shapes import CHUNK_IMAGES, ShapesScorer

    scenes = sample_scenes(3 * CHUNK_IMAGES + 5, 9, holdout=())
    images = [render(scene) for scene in scenes]
    captions = [scenes[(i * 7) % len(scenes)].caption for i in range(len(scenes))]  # mostly the wrong caption
    alone = ShapesScorer(workers=0)(images, captions)
    assert 0 < sum(score == 1.0 for score in alone) < len(alone)
    pooled = ShapesScorer(workers=2)
    try:
        wait = pooled.submit(images, captions)
        assert callable(wait) and wait() == alone
    finally:
        pooled.close()


def test_reward_set_submit_scores_later_and_names_a_failing_term(tmp_path):
    from sana.nano.shapes import render, sample_scenes

    scenes = sample_scenes(3, 2, holdout=())
    images = torch.from_numpy(np.stack([render(s) for s in scenes])).permute(0, 3, 1, 2).float() / 255
    captions = [s.caption for s in scenes]
    reward = rw.RewardSet(rw.parse_rewards("shapes"), "cpu")
    try:
        total, parts = reward.submit(images, captions, [{}] * 3)()
        torch.testing.assert_close(total, torch.ones(3)) and torch.testing.assert_close(parts["shapes"], torch.ones(3))
        with pytest.raises(rw.RewardError, match="reward 'shapes' raised ValueError"):
            reward.submit(torch.cat([images, images[:, :1]], dim=1), captions, [{}] * 3)()  # four channels
    finally:
        reward.close()


# -- CLIP and PickScore -------------------------------------------------------------------------------------------

def tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A tiny random CLIP (character-level tokenizer, 32 px images) saved the way the hub repos are."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,'":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    torch.manual_seed(seed)
    config = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1),
                        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37,
                                           num_hidden_layers=2, num_attention_heads=4), projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("clip"))


def test_clip_and_pickscore_match_transformers_forward(clip_dir):
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor

    from sana.rewards.models import ClipReward

    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 48, 48, generator=gen)
    prompts = ["a red circle", "a blue square on the left", "cat"]
    arrays = (images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    model, processor = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    inputs = processor(text=prompts, images=[Image.fromarray(a) for a in arrays], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits_per_image.diagonal()  # logit_scale * cosine
    clip = ClipReward("clip", str(clip_dir), "cpu")(images, prompts, [{}] * 3)
    pick = ClipReward("pickscore", str(clip_dir), "cpu")(images, prompts, [{}] * 3)
    torch.testing.assert_close(pick, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(clip, logits / model.logit_scale.exp(), rtol=1e-4, atol=1e-5)
    assert clip.abs().max() <= 1.0 and clip.std() > 0


def _fake_hub_cache(root: Path, repo: str, source: Path, names: list[str] | None = None) -> None:
    snapshot = root / ("models--" + repo.replace("/", "--")) / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    for path in source.iterdir():
        if names is None or path.name in names:
            shutil.copy(path, snapshot / path.name)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")


def test_reward_models_come_from_the_hub_cache_or_a_folder_and_never_download(clip_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from sana.rewards.models import REWARD_MODELS, files_to_pull, locate_reward_model

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotFound, match=r"not downloaded .*sana models pull pickscore"):
        rw.check_rewards(rw.parse_rewards("pickscore"))
    spec = REWARD_MODELS["pickscore"]
    _fake_hub_cache(tmp_path / "hub", spec.repo, clip_dir, ["config.json", "model.safetensors"])
    with pytest.raises(ModelNotFound, match="not downloaded"):  # the processor's repo is still missing
        locate_reward_model("pickscore")
    _fake_hub_cache(tmp_path / "hub", spec.processor_repo, clip_dir)
    weights, processor = locate_reward_model("pickscore")
    assert (weights / "model.safetensors").exists() and (processor / "vocab.json").exists()
    assert locate_reward_model("clip", str(clip_dir)) == (clip_dir.resolve(), clip_dir.resolve())
    with pytest.raises(UsageError, match="not a CLIP model folder"):
        locate_reward_model("clip", str(tmp_path))
    repo = ["config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "open_clip_model.safetensors",
            "flax_model.msgpack", "merges.txt", "images/x.png"]
    assert files_to_pull(repo, weights=True) == ["config.json", "merges.txt", "model.safetensors",
                                                 "open_clip_model.safetensors", "tokenizer.json"]
    assert files_to_pull(["config.json", "pytorch_model.bin", "vocab.json"], weights=True) == [
        "config.json", "pytorch_model.bin", "vocab.json"]
    assert files_to_pull(repo, weights=False) == ["config.json", "merges.txt", "tokenizer.json"]


def test_reward_models_are_listed_and_pulled_by_sana_models(tmp_path):
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    listed = run_sana("models", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "pickscore" in listed.stdout and "reward" in listed.stdout
    pulled = run_sana("models", "pull", "pickscore", env=env)  # HF_HUB_OFFLINE=1 in tests: no network
    assert "offline" in assert_one_line_error(pulled)
