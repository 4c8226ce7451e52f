"""Where RL prompts come from: the shapes grammar's sources (`shapes`, `shapes:seen`, `shapes:hard`) draw from
(seed, round) alone and never from `sana shapes score`'s evaluation streams; `shapes:hard` is mostly held-out pairs."""

from __future__ import annotations

import pytest

from sana.errors import UsageError
from sana.nano.adherence import evaluation_prompts
from sana.nano.shapes import DEFAULT_HOLDOUT, parse_caption
from sana.training.rl.prompts import HARD_HELD_OUT, SHAPES_SOURCES, read_prompts


def _scenes(name: str, rounds: int = 25, count: int = 32, seed: int = 0):
    source = read_prompts(name)
    return [parse_caption(p.text) for r in range(rounds) for p in source.round_prompts(seed, r, count)]


def _held_out(scene) -> bool:
    return any(o.pair in DEFAULT_HOLDOUT for o in scene.objects)


def test_hard_prompts_are_mostly_held_out_pairs_and_two_objects():
    scenes = _scenes("shapes:hard")
    held_out = [s for s in scenes if _held_out(s)]
    assert abs(len(held_out) / len(scenes) - HARD_HELD_OUT) < 0.05
    assert all(len(s.objects) == 2 for s in scenes if not _held_out(s))  # no one-object scene of seen pairs
    assert 0.4 < sum(len(s.objects) == 2 for s in held_out) / len(held_out) < 0.6
    assert {o.pair for s in held_out for o in s.objects} >= set(DEFAULT_HOLDOUT)  # every held-out pair comes up
    whole = _scenes("shapes")
    assert sum(map(_held_out, whole)) / len(whole) < 0.4 and not any(map(_held_out, _scenes("shapes:seen")))


@pytest.mark.parametrize("name", sorted(SHAPES_SOURCES))
def test_grammar_prompts_depend_on_seed_and_round_only(name):
    source = read_prompts(name)
    again = read_prompts(name)
    assert [p.text for p in source.round_prompts(0, 7, 8)] == [p.text for p in again.round_prompts(0, 7, 8)]
    assert source.round_prompts(0, 7, 8) != source.round_prompts(0, 8, 8) != source.round_prompts(1, 7, 8)
    # Round r's prompts are positions r x count ..: two rounds of 4 are one round of 8.
    assert source.round_prompts(0, 2, 4) + source.round_prompts(0, 3, 4) == source.round_prompts(0, 1, 8)
    assert source.validation(0, 8) != source.round_prompts(0, 0, 8) and source.fingerprint() == name


@pytest.mark.parametrize("name", sorted(SHAPES_SOURCES))
def test_grammar_prompts_never_come_from_the_scored_streams(name, monkeypatch):
    """`sana shapes score` draws its sets from streams of their own (`eval-*`); training and validation prompts
    come from the RL streams (a small grammar repeats captions, never the scored sequence of scenes)."""
    from sana.nano import shapes

    streams = set()
    real = shapes.scene_rng

    def recording(seed, index, stream="train"):
        streams.add(stream)
        return real(seed, index, stream)

    monkeypatch.setattr(shapes, "scene_rng", recording)
    source = read_prompts(name)
    source.round_prompts(0, 3, 16), source.validation(0, 16)
    expected = {"rl-hard", "rl-hard-val"} if name == "shapes:hard" else {"rl", "rl-val"}
    assert streams == expected
    monkeypatch.setattr(shapes, "scene_rng", real)
    scored = [scene.caption for _, scene, _ in evaluation_prompts(200, 0)]
    drawn = [p.text for r in range(10) for p in source.round_prompts(0, r, 30)]
    assert sum(a == b for a, b in zip(drawn, scored + scored)) <= 3


def test_an_unknown_source_names_the_grammar_sources():
    with pytest.raises(UsageError) as info:
        read_prompts("shapes:hardest")
    assert "shapes:hard" in info.value.hint
