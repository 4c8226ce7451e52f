"""Where an RL run's prompts come from: a text file (one prompt a line), a JSONL file (`prompt` and any other
fields, handed to the rewards as metadata), or the nano shapes grammar's sampler.

Round `r` draws its prompts from (seed, r) alone, so a resumed run sees the prompts an uninterrupted one would
have seen. Files are read in a fresh seeded order each pass; the grammar draws scene `r * count + i` of a stream
of its own (never `sana shapes score`'s evaluation streams). Validation prompts are fixed: a file's first lines, or
the grammar's validation stream. No torch.

`shapes:hard` spends the rounds where the nano model fails: prompts from the whole grammar score 0.97-0.98 and
soon all 1.0 (equal rewards, zero advantages), while scenes with a held-out colour-shape pair are 85% fully
correct (49% at 4 steps). Its prompts have a held-out pair `HARD_HELD_OUT` of the time (one or two objects, as
the evaluation's held-out set), else two objects of seen pairs; one-object scenes of seen pairs (100%) never.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import UsageError

SHAPES_SOURCES = {"shapes": "every colour-shape pair", "shapes:seen": "the pairs the nano model was pre-trained on",
                  "shapes:hard": "mostly held-out colour-shape pairs, the rest two-object scenes of seen pairs"}
HARD_HELD_OUT = 0.75  # share of shapes:hard prompts with a held-out pair


@dataclass(frozen=True)
class Prompt:
    text: str
    fields: dict = field(default_factory=dict)  # a JSONL line's other keys (e.g. what a reward checks)


class PromptSource:
    """A list of prompts read from a file."""

    def __init__(self, prompts: list[Prompt], name: str):
        self.prompts, self.name = prompts, name

    def round_prompts(self, seed: int, round_index: int, count: int) -> list[Prompt]:
        """The `count` prompts of round `round_index`: consecutive positions of seeded passes over the file."""
        out = []
        for position in range(round_index * count, (round_index + 1) * count):
            epoch, offset = divmod(position, len(self.prompts))
            out.append(self.prompts[self._order(seed, epoch)[offset]])
        return out

    def _order(self, seed: int, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(f"rl-prompts:{seed}:{epoch}").shuffle(order)
        return order

    def validation(self, seed: int, count: int) -> list[Prompt]:
        return self.prompts[:count]

    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(p.text for p in self.prompts).encode()).hexdigest()[:16]

    def first_non_grammar(self) -> str | None:
        """The first prompt that is not a caption of the shapes grammar (which the `shapes` reward cannot check)."""
        from ...errors import SanaError
        from ...nano.shapes import parse_caption

        for prompt in self.prompts:
            try:
                parse_caption(prompt.text)
            except SanaError:
                return prompt.text
        return None


class ShapesSource(PromptSource):
    """Captions drawn from the nano shapes grammar: half of them with two objects (`shapes`, `shapes:seen`), or
    mostly held-out pairs (`shapes:hard`)."""

    def __init__(self, name: str):
        super().__init__([], name)
        from ...nano.shapes import DEFAULT_HOLDOUT, allowed_pairs

        self.pairs = allowed_pairs(DEFAULT_HOLDOUT if name == "shapes:seen" else ())
        self.seen = allowed_pairs(DEFAULT_HOLDOUT)
        self.stream = "rl-hard" if name == "shapes:hard" else "rl"

    def _scene(self, seed: int, index: int, stream: str) -> Prompt:
        from ...nano.shapes import DEFAULT_HOLDOUT, sample_scene, scene_rng

        rng = scene_rng(seed, index, stream)
        if self.name != "shapes:hard":
            scene = sample_scene(rng, 2 if rng.random() < 0.5 else 1, self.pairs)
        elif rng.random() < HARD_HELD_OUT:
            scene = sample_scene(rng, 2 if rng.random() < 0.5 else 1, self.pairs, required=DEFAULT_HOLDOUT)
        else:
            scene = sample_scene(rng, 2, self.seen)
        return Prompt(scene.caption)

    def round_prompts(self, seed: int, round_index: int, count: int) -> list[Prompt]:
        return [self._scene(seed, round_index * count + i, self.stream) for i in range(count)]

    def validation(self, seed: int, count: int) -> list[Prompt]:
        return [self._scene(seed, i, f"{self.stream}-val") for i in range(count)]

    def fingerprint(self) -> str:
        return self.name

    def first_non_grammar(self) -> str | None:
        return None


def read_prompts(arg: str) -> PromptSource:
    """The prompt source PROMPTS names; a missing, unreadable, empty or malformed file is a one-line error."""
    if arg in SHAPES_SOURCES:
        return ShapesSource(arg)
    path = Path(arg).expanduser()
    if not path.is_file():
        grammar = " / ".join(SHAPES_SOURCES)
        takes = f"--rl takes a text file (one prompt a line), a .jsonl file, or {grammar} (the nano grammar)"
        if path.is_dir():  # supervised fine-tuning's data folder, given to --rl
            raise UsageError(f"{arg} is a folder; --rl trains on prompts, not on images or clips", takes)
        raise UsageError(f"prompts file not found: {arg}", takes)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the prompts file {arg} ({exc})") from None
    prompts = _parse_jsonl(text, arg) if path.suffix.lower() == ".jsonl" else \
        [Prompt(line.strip()) for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"the prompts file {arg} is empty", "put one prompt a line in it")
    return PromptSource(prompts, str(path))


def _parse_jsonl(text: str, arg: str) -> list[Prompt]:
    prompts = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{arg} line {number} is not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise UsageError(f"{arg} line {number} has no \"prompt\" string", 'each line is {"prompt": "...", ...}')
        prompts.append(Prompt(row["prompt"].strip(), {k: v for k, v in row.items() if k != "prompt"}))
    return prompts
