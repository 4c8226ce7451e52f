"""scripts/bench_finetune.py (the 1.6B LoRA step against diffusers' recipe on a GPU): its path for our trainer at
the nano config on the CPU, so it cannot rot. Its `--compile` row runs the same trainer with `compile=True`,
which the fine-tuning tests cover."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_finetune.py"


def test_the_finetune_benchmark_runs_our_step_on_a_cpu():
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", "nano", "--res", "128", "--batch", "2",
                           "--warmup", "1", "--steps", "2", "--device", "cpu", "--precision", "fp32"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [row["impl"] for row in rows] == ["sana"]
    row = rows[0]
    assert (row["device"], row["model"], row["mode"], row["lora_rank"], row["gpus"]) == ("cpu", "nano", "lora", 4, 1)
    assert row["step_s"] > 0 and row["samples_per_s"] == 2 / row["step_s"]
