"""`--best-of N` for `sana gen` / `sana sprint`: inference-time scaling as SANA-1.5 describes it, each output the best
of N candidates by a reward (`--reward`, the rewards of `sana finetune --rl`: shapes, clip, pickscore, hpsv2,
imagereward, or a function of the user's).

Output i with seed s_i (of K outputs) draws its candidates from seeds s_i, s_i + K, s_i + 2K, ... so the outputs
never share a candidate, and a rerun draws the same ones. Candidates are generated a few at a time
(`CANDIDATES_A_BATCH`), scored, and only the best is kept: saved under the output's planned name (the first
candidate's seed), its record holding the chosen seed (what `--from` replays, alone instead of in a batch of
candidates: the same image up to the batch's rounding), the reward and every candidate's score.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from sana.errors import UsageError

MAX_CANDIDATES = 256
CANDIDATES_A_BATCH = 4  # images a forward while choosing: the memory plan is made for this batch


def check_flags(flags: dict[str, Any]) -> None:
    """What --best-of and --reward ask of the other flags (before the model is even resolved)."""
    if flags.get("best_of") is None:
        if flags.get("reward"):
            raise UsageError("--reward chooses among --best-of N candidates", "add --best-of N (e.g. 8)")
        return
    if not 2 <= int(flags["best_of"]) <= MAX_CANDIDATES:
        raise UsageError(f"--best-of {flags['best_of']} is out of range", f"use 2 to {MAX_CANDIDATES}")
    if flags.get("server"):
        raise UsageError("--best-of runs here, not on a server", "drop --server")


def reward_terms(flags: dict[str, Any], spec, model_arg: str):
    """The reward terms for --best-of (None without it): names, plugin files, packages and downloaded weights
    checked, no torch."""
    from sana.rewards.plugins import check_rewards, parse_rewards

    if flags.get("best_of") is None:
        return None
    text = flags.get("reward") or default_reward(spec, model_arg)
    terms = parse_rewards(text)
    if not terms:
        raise UsageError(f"--reward '{text}' names no reward", "e.g. --reward pickscore")
    check_rewards(terms)
    return terms


def default_reward(spec, model_arg: str) -> str:
    """The nano model's own checker for its grammar; PickScore (a human-preference model) for the others."""
    return "shapes" if (spec is not None and spec.name == "nano") or model_arg == "nano" else "pickscore"


def candidate_seeds(seeds: list[int], count: int) -> list[list[int]]:
    """Each output's candidate seeds: s_i + j K for j < count (K outputs), wrapped to 32 bits."""
    k = len(seeds)
    return [[(seed + j * k) % 2**32 for j in range(count)] for seed in seeds]


@dataclass
class Choice:
    seed: int
    image: Any  # PIL image
    details: dict  # what `on_output` gives: timings, generated size, memory
    score: float
    scores: list[tuple[int, float]]  # (seed, total score) of every candidate, best first


def choose_best(pipe, request, seeds: list[int], rewards, generate) -> Choice:
    """Generate the candidates of one output (`generate(request) -> ImageResult`, a few seeds a forward), score
    them with `rewards` (a `RewardSet`) and return the best with every candidate's score."""
    import numpy as np
    import torch

    images, details = [], {}
    for start in range(0, len(seeds), CANDIDATES_A_BATCH):
        chunk = seeds[start:start + CANDIDATES_A_BATCH]
        result = generate(dataclasses.replace(request, seeds=chunk))
        images += result.images
        details = {"timings": result.timings, "generated_size": result.generated_size, "memory": result.memory}
    pixels = torch.stack([torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                          for image in images]).to(pipe.device)
    total, _ = rewards(pixels, [request.prompt] * len(images), [{} for _ in images])
    totals = total.float().cpu().tolist()
    ranked = sorted(zip(seeds, totals), key=lambda pair: -pair[1])
    best = max(range(len(seeds)), key=lambda i: totals[i])
    return Choice(seeds[best], images[best], details, totals[best], [(s, round(v, 6)) for s, v in ranked])
