"""An RL run's records: `rewards.csv` (a row a round), `reward.png` (mean, best and worst reward per round, and
the validation reward), and the validation grids (`samples/round-NNNNNN.png`, each tile's reward under it).
Drawn with PIL; no plotting library needed.

rewards.csv's reward columns are all over the same images, the round's kept rollouts (every prompt trained on,
`--keep-seeds` a prompt, every process), but are different statistics:
    reward_mean                 the mean of them all
    reward_best, reward_worst   the mean over prompts of each prompt's best / worst rollout
    adv_std                     the standard deviation of them all, across prompts: what the advantages are
                                divided by. It holds the spread between prompts, so it can be far wider than
                                reward_best - reward_worst (two prompts whose seeds score 0.96 and 0.5 give best and
                                worst 0.73, adv_std 0.23). Older runs called it reward_std.
    explore_mean                the mean over every candidate of the cheap exploration pass, the whole
                                --prompt-pool included (when --candidates exceeds --keep-seeds)
    explore_uniform             the share of explored prompts whose candidates all scored alike
    val_reward                  the mean over the validation grid, on rounds validated
    reward_LABEL                each term's mean over the kept rollouts, when several rewards are summed
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..plot import read_log, write_rows

REWARDS_NAME = "rewards.csv"
REWARD_PLOT = "reward.png"
BASE_FIELDS = ("round", "reward_mean", "reward_best", "reward_worst", "adv_std", "explore_mean", "explore_uniform",
               "val_reward",
               "policy_loss", "kl", "lr", "grad_norm", "old_decay", "images_per_s", "elapsed_s")
RENAMED = {"reward_std": "adv_std"}  # old column -> its name now: a resumed older run keeps its values


def fields_for(labels: list[str]) -> list[str]:
    """The columns: the base ones, plus each term's mean when several rewards are summed."""
    return list(BASE_FIELDS) + ([f"reward_{label}" for label in labels] if len(labels) > 1 else [])


def read_rows(path: Path) -> list[dict]:
    """The rows, older column names read as today's (not where the file has today's too: a reward term called
    `std` has a `reward_std` column of its own)."""
    rows = read_log(path)
    for row in rows:
        for old, new in RENAMED.items():
            if old in row and new not in row:
                row[new] = row.pop(old)
    return rows


def append_row(path: Path, row: dict, fields: list[str]) -> None:
    write_rows(path, read_rows(path) + [row], fields)


def set_value(path: Path, round_index: int, key: str, value: str, fields: list[str]) -> None:
    """Fill one column of round `round_index`'s row (the validation reward comes after the row is written)."""
    rows = read_rows(path)
    for row in rows:
        if row.get("round") == str(round_index):
            row[key] = value
            break
    else:
        rows.append({"round": str(round_index), key: value})
    write_rows(path, rows, fields)


def truncate_rows(path: Path, last_round: int, fields: list[str]) -> None:
    """Drop rows after `last_round` (a resumed run repeats them)."""
    if path.exists():
        write_rows(path, [r for r in read_rows(path) if r.get("round", "").isdigit() and int(r["round"]) <= last_round],
                   fields)


def plot_rewards(log: Path, out: Path, width: int = 900, height: int = 500) -> None:
    """Mean (dark), best and worst (light) reward per round, and the validation reward (orange dots)."""
    from PIL import Image, ImageDraw

    rows = read_rows(log)
    series = {}
    for key in ("reward_mean", "reward_best", "reward_worst", "val_reward"):
        points = [(int(r["round"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        series[key] = [(x, y) for x, y in points if math.isfinite(y)]
    values = [y for points in series.values() for _, y in points]
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 70, width - 20, 20, height - 40
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    rounds = [x for points in series.values() for x, _ in points]
    if values and rounds:
        lo, hi = min(values), max(values)
        hi = hi if hi > lo else lo + 1e-3
        r0, r1 = min(rounds), max(max(rounds), min(rounds) + 1)

        def xy(x: float, y: float) -> tuple[float, float]:
            return left + (x - r0) / (r1 - r0) * (right - left), bottom - (y - lo) / (hi - lo) * (bottom - top)

        colours = {"reward_best": (150, 200, 150), "reward_worst": (220, 150, 150), "reward_mean": (20, 60, 160)}
        for key, colour in colours.items():
            if len(series[key]) >= 2:
                draw.line([xy(x, y) for x, y in series[key]], fill=colour, width=2 if key == "reward_mean" else 1)
        for x, y in series["val_reward"]:
            cx, cy = xy(x, y)
            draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(230, 120, 20))
        for frac in (0.0, 0.5, 1.0):
            value = lo + frac * (hi - lo)
            y = xy(r0, value)[1]
            draw.text((5, y - 6), f"{value:.4g}", fill=(0, 0, 0))
            draw.line([(left - 4, y), (left, y)], fill=(0, 0, 0))
        draw.text((left, bottom + 8), str(r0), fill=(0, 0, 0))
        draw.text((right - 40, bottom + 8), str(max(rounds)), fill=(0, 0, 0))
    draw.text((width // 2 - 160, bottom + 20), "round / reward: mean, best, worst; validation (dots)", fill=(0, 0, 0))
    tmp = out.with_name(f".{out.name}.tmp.png")
    image.save(tmp)
    os.replace(tmp, out)


def reward_grid(images: list, scores: list[float], *, columns: int = 8, tile: int = 128):
    """A PIL grid of images with each one's reward written under it."""
    from PIL import Image, ImageDraw

    rows = max(1, math.ceil(len(images) / columns))
    step_x, step_y = tile + 4, tile + 18
    grid = Image.new("RGB", (min(columns, max(1, len(images))) * step_x, rows * step_y), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, (image, score) in enumerate(zip(images, scores)):
        x, y = (i % columns) * step_x + 2, (i // columns) * step_y + 2
        grid.paste(image.convert("RGB").resize((tile, tile), Image.Resampling.BILINEAR), (x, y))
        draw.text((x + 2, y + tile + 2), f"{score:.3f}", fill=(0, 0, 0))
    return grid
