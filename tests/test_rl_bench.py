"""scripts/bench_rl.py: its whole path at a tiny size on the CPU (so it cannot rot), the real measurement on a GPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_rl.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_rl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_measures_every_number(tmp_path):
    out = tmp_path / "bench.json"
    result = _bench().main(["--tiny", "--device", "cpu", "--candidates", "6", "--keep", "2", "--prompts", "2",
                            "--rollout-batch", "6", "--batch-size", "2", "--explore-steps", "2", "--rollout-steps", "3",
                            "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["explore_images_per_s"] > 0 and result["rollout_images_per_s"] > 0 and result["round_s"] > 0
    assert result["round_images"] == 2 * 6 + 2 * 2  # every candidate explored, the kept ones regenerated


@pytest.mark.gpu
def test_sana_1600m_at_1024_on_the_gpu(tmp_path):
    """The issue's measurement (fp8 exploration at 6 steps against bf16 at 10; one round of 96 candidates, 24 kept)."""
    result = _bench().main(["--json", str(tmp_path / "bench.json")])
    assert result["explore"] in ("fp8", "bfloat16") and result["peak_memory_gib"] > 0
    assert result["explore_speedup"] > 1.0
