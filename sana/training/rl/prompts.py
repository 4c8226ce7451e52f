"""Where an RL run's prompts come from: a text file (one prompt a line), a JSONL file (`prompt` and any other
fields, handed to the rewards as metadata), or the nano shapes grammar's sampler.

Round `r` draws its prompts from (seed, r) alone, so a resumed run sees the prompts an uninterrupted one would
have seen. Files are read in a fresh seeded order each pass; the grammar draws scene `r * count + i` of a stream
of its own. Validation prompts are fixed: a file's first lines, or the grammar's validation stream. No torch.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import UsageError

SHAPES_SOURCES = {"shapes": "every colour-shape pair", "shapes:seen": "the pairs the nano model was pre-trained on"}


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
    """Captions drawn from the nano shapes grammar, half of them with two objects."""

    def __init__(self, name: str):
        super().__init__([], name)
        from ...nano.shapes import DEFAULT_HOLDOUT, allowed_pairs

        self.pairs = allowed_pairs(DEFAULT_HOLDOUT if name == "shapes:seen" else ())

    def _scene(self, seed: int, index: int, stream: str) -> Prompt:
        from ...nano.shapes import sample_scene, scene_rng

        rng = scene_rng(seed, index, stream)
        scene = sample_scene(rng, 2 if rng.random() < 0.5 else 1, self.pairs)
        return Prompt(scene.caption)

    def round_prompts(self, seed: int, round_index: int, count: int) -> list[Prompt]:
        return [self._scene(seed, round_index * count + i, "rl") for i in range(count)]

    def validation(self, seed: int, count: int) -> list[Prompt]:
        return [self._scene(seed, i, "rl-val") for i in range(count)]

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
        raise UsageError(f"prompts file not found: {arg}",
                         "give a text file (one prompt a line), a .jsonl file, or shapes / shapes:seen (the nano grammar)")
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
