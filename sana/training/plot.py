"""The loss log (CSV) and a loss-curve PNG drawn with PIL (no plotting library needed)."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

LOG_FIELDS = ("step", "loss", "lr", "grad_norm", "samples_per_s", "elapsed_s")


def append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=LOG_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in LOG_FIELDS})


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def truncate_log(path: Path, last_step: int) -> None:
    """Drop rows after `last_step` (a resumed run repeats them), atomically."""
    rows = [r for r in read_log(path) if r.get("step", "").isdigit() and int(r["step"]) <= last_step]
    write_rows(path, rows, LOG_FIELDS)


def last_elapsed(path: Path) -> float:
    """The training seconds a log's kept rows took (its last `elapsed_s`; 0 when none): a resumed run's clock
    goes on from there, so `elapsed_s` stays the whole run's time and not the last process's."""
    for row in reversed(read_log(path)):
        try:
            return float(row.get("elapsed_s") or "")
        except ValueError:
            continue
    return 0.0


def write_rows(path: Path, rows: list[dict], fields) -> None:
    """Rewrite the whole CSV atomically (a crash leaves the old file or the new); missing columns stay empty."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: r.get(k, "") for k in fields} for r in rows)
    os.replace(tmp, path)


def plot_loss(log: Path, out: Path, width: int = 900, height: int = 500) -> None:
    """Raw loss (light) and its exponential moving average (dark) against the step, log-scaled loss axis."""
    from PIL import Image, ImageDraw

    rows = [(int(r["step"]), float(r["loss"])) for r in read_log(log) if r.get("loss")]
    rows = [(s, v) for s, v in rows if math.isfinite(v) and v > 0]
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 70, width - 20, 20, height - 40
    draw.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    if len(rows) >= 2:
        steps = [s for s, _ in rows]
        logs = [math.log10(v) for _, v in rows]
        lo, hi = min(logs), max(logs)
        hi = hi if hi > lo else lo + 1e-3
        s0, s1 = steps[0], max(steps[-1], steps[0] + 1)

        def xy(step: float, value: float) -> tuple[float, float]:
            return (left + (step - s0) / (s1 - s0) * (right - left), bottom - (value - lo) / (hi - lo) * (bottom - top))

        draw.line([xy(s, v) for s, v in zip(steps, logs)], fill=(160, 190, 230), width=1)
        smooth, ema = [], logs[0]
        for v in logs:
            ema = 0.9 * ema + 0.1 * v
            smooth.append(ema)
        draw.line([xy(s, v) for s, v in zip(steps, smooth)], fill=(20, 60, 160), width=2)
        for frac in (0.0, 0.5, 1.0):
            value = lo + frac * (hi - lo)
            y = xy(s0, value)[1]
            draw.text((5, y - 6), f"{10 ** value:.3g}", fill=(0, 0, 0))
            draw.line([(left - 4, y), (left, y)], fill=(0, 0, 0))
        draw.text((left, bottom + 8), str(s0), fill=(0, 0, 0))
        draw.text((right - 40, bottom + 8), str(steps[-1]), fill=(0, 0, 0))
    draw.text((width // 2 - 40, bottom + 20), "step / loss", fill=(0, 0, 0))
    tmp = out.with_name(f".{out.name}.tmp.png")
    image.save(tmp)
    os.replace(tmp, out)
