"""Default output names: readable (prompt slug, seed), the same on every rerun, and never shared by two prompts; and
`--skip-existing`'s test of whether a planned output is made already (its record, not its name)."""

from __future__ import annotations

import hashlib
import re

import pytest
from PIL import Image

from sana.errors import SanaError
from sana.outputs import (
    GenerationRecord,
    made_already,
    plan_clip_paths,
    plan_output_paths,
    prompt_slug,
    prompt_stem,
    save_image,
)

WHITE = "a small red circle on the left on a white background"
BLACK = "a small red circle on the left on a black background"


def short_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8]


# ------------------------------------------------------------------------------------------------------------------
# Names
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt, stem", [
    ("a red fox", "a-red-fox"),
    ("A Red Fox, in the SNOW!", "a-red-fox-in-the-snow"),  # every word spelled: no hash
    ("Café crème", "cafe-creme"),
], ids=["plain", "case-and-punctuation", "accents"])
def test_prompts_the_slug_spells_keep_their_names(prompt, stem):
    assert prompt_stem(prompt) == stem


def test_a_cut_slug_carries_a_hash_of_the_whole_prompt():
    assert prompt_slug(WHITE) == prompt_slug(BLACK) == "a-small-red-circle-on-the-left-on-a"
    assert prompt_stem(WHITE) == f"a-small-red-circle-on-the-left-on-a-{short_hash(WHITE)}"
    assert prompt_stem(BLACK) != prompt_stem(WHITE) and prompt_stem(WHITE) == prompt_stem(WHITE)
    assert prompt_stem("x" * 100) == f"{'x' * 40}-{short_hash('x' * 100)}"  # one word too long for the slug


def test_prompts_whose_words_the_slug_drops_carry_a_hash():
    # no ASCII word at all: the fallback alone would name every such prompt alike
    assert prompt_stem("宇宙飛行士の猫") == f"image-{short_hash('宇宙飛行士の猫')}"
    assert prompt_stem("宇宙飛行士の猫") != prompt_stem("猫")
    assert prompt_stem("猫 on a mat") != prompt_stem("犬 on a mat")  # the ASCII words alike, the others not


def test_distinct_long_prompts_get_distinct_image_paths_in_one_folder(tmp_path):
    white = plan_output_paths(f"{tmp_path}/", prompt=WHITE, seeds=[3], force=False)
    black = plan_output_paths(f"{tmp_path}/", prompt=BLACK, seeds=[3], force=False)
    assert white != black
    assert re.fullmatch(r"a-small-red-circle-on-the-left-on-a-[0-9a-f]{8}-3\.png", white[0].name)
    # deterministic: the same prompt and seed plan the same name again, which is then refused unless forced
    white[0].write_bytes(b"made")
    with pytest.raises(SanaError, match="exists; use --force"):
        plan_output_paths(f"{tmp_path}/", prompt=WHITE, seeds=[3], force=False)
    assert plan_output_paths(f"{tmp_path}/", prompt=WHITE, seeds=[3], force=True) == white
    assert plan_output_paths(f"{tmp_path}/", prompt=BLACK, seeds=[3], force=False) == black  # not in the way


def test_clips_are_named_like_images(tmp_path):
    white = plan_clip_paths(f"{tmp_path}/", prompt=WHITE, seeds=[1], force=False)
    black = plan_clip_paths(f"{tmp_path}/", prompt=BLACK, seeds=[1], fmt="png", force=False)
    assert white[0].name == f"{prompt_stem(WHITE)}-1.mp4" and black[0].name == f"{prompt_stem(BLACK)}-1"
    assert plan_clip_paths(f"{tmp_path}/", prompt="宇宙", seeds=[3], force=False)[0].name == \
        f"clip-{short_hash('宇宙')}-3.mp4"
    assert plan_clip_paths(f"{tmp_path}/", prompt="a boat", seeds=[3], force=False)[0].name == "a-boat-3.mp4"


# ------------------------------------------------------------------------------------------------------------------
# Made already (--skip-existing)
# ------------------------------------------------------------------------------------------------------------------

def _image(path, **fields):
    record = GenerationRecord(**{"prompt": WHITE, "seed": 3, "model": "nano", **fields})
    save_image(Image.new("RGB", (8, 8), "white"), path, record)
    return path


def test_an_output_is_made_when_its_record_holds_the_prompt_and_seed(tmp_path):
    path = _image(tmp_path / "out.png")
    assert made_already(tmp_path / "absent.png", prompt=WHITE, seed=3) is False
    assert made_already(path, prompt=WHITE, seed=3) is True
    assert made_already(path, prompt=WHITE, seed=3, model="nano") is True
    assert made_already(path, prompt=WHITE, seed=3, model="NANO") is True  # one preset, two spellings


@pytest.mark.parametrize("asked, message", [
    ({"prompt": BLACK, "seed": 3}, f"holds another prompt, '{WHITE}'"),
    ({"prompt": WHITE, "seed": 4}, "holds seed 3, not 4"),
    ({"prompt": WHITE, "seed": 3, "model": "sana-0.6b"}, "was made with nano, not sana-0.6b"),
], ids=["another-prompt", "another-seed", "another-model"])
def test_a_file_holding_something_else_is_in_the_way(tmp_path, asked, message):
    path = _image(tmp_path / "out.png")
    with pytest.raises(SanaError) as caught:
        made_already(path, **asked)
    assert str(caught.value).startswith(f"{path} is in the way: it {message}")
    assert "\n" not in str(caught.value)


def test_a_file_without_a_record_is_in_the_way(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    for name in ("notes.png", "plain.png"):
        with pytest.raises(SanaError, match=f"{name} is in the way: it holds no record"):
            made_already(tmp_path / name, prompt=WHITE, seed=3)


def test_a_best_of_output_is_made_for_the_seed_it_was_named_by(tmp_path):
    """--best-of saves the chosen candidate under the first candidate's seed, its record holding the chosen one."""
    path = _image(tmp_path / "best.png", seed=7, extra={"best_of": {"scores": [[7, 0.9], [3, 0.5]]}})
    assert made_already(path, prompt=WHITE, seed=3) is True
    with pytest.raises(SanaError, match="holds seed 7, not 4"):
        made_already(path, prompt=WHITE, seed=4)
