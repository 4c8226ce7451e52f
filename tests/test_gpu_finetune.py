"""On GPUs: `sana finetune` in bf16 on CUDA (LoRA with validation images, full), and on two GPUs through
`--gpus 2` (torchrun, NCCL) giving what one GPU with the global batch gives."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.test_finetune import make_dataset, trained_weights
from tests.tiny_pipeline import build_pipeline

pytestmark = pytest.mark.gpu


def sana_module(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The CLI as `python -m sana_cli` (works without the entry point installed)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "sana_cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-finetune")
    build_pipeline(root / "model")
    return root, make_dataset(root / "data", count=8)


def args(root, data, out, *extra):
    return ["finetune", str(data), "--model", str(root / "model"), "--out", str(root / out), "--res", "32",
            "--device", "cuda", *extra]


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_finetune_on_cuda_in_bf16(setup, mode):
    root, data = setup
    extra = ["--steps", "6", "--batch-size", "2", "--checkpoint-every", "3", "--val-prompt", "a red square",
             "--val-steps", "2"] + (["--full", "--ema", "0.9"] if mode == "full" else [])
    result = sana_module(*args(root, data, f"one-{mode}", *extra))
    assert result.returncode == 0, result.stderr[-3000:]
    out = root / f"one-{mode}"
    assert (out / "samples" / "step-000006-0.png").is_file()
    target = out / ("pytorch_lora_weights.safetensors" if mode == "lora" else "model")
    assert target.exists()
    gen = sana_module("gen", "a red square", "--model", str(target if mode == "full" else root / "model"),
                      *(["--lora", str(target)] if mode == "lora" else []), "--res", "32", "--steps", "2",
                      "--device", "cuda", "--out", str(out / "gen.png"))
    assert gen.returncode == 0, gen.stderr[-3000:]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("mode", ["lora", "full"])
def test_two_gpus_match_one_gpu_with_the_global_batch(setup, mode):
    root, data = setup
    extra = ["--steps", "3", "--lr", "1e-3", "--checkpoint-every", "3", "--precision", "fp32"]
    extra += ["--full"] if mode == "full" else []
    one = sana_module(*args(root, data, f"g1-{mode}", "--batch-size", "2", *extra))
    assert one.returncode == 0, one.stderr[-3000:]
    two = sana_module(*args(root, data, f"g2-{mode}", "--batch-size", "1", "--gpus", "2", *extra))
    assert two.returncode == 0, two.stderr[-3000:]
    rows = [[r.split(",")[1:4] for r in (root / n / "loss.csv").read_text().splitlines()[1:]]
            for n in (f"g1-{mode}", f"g2-{mode}")]
    for a, b in zip(*rows):
        np.testing.assert_allclose(np.array(a, dtype=float), np.array(b, dtype=float), rtol=2e-3)
    # As on the CPU: a few near-zero-gradient weights may differ by an Adam step; the rest agree to rounding.
    first, second = trained_weights(root / f"g1-{mode}"), trained_weights(root / f"g2-{mode}")
    diffs = torch.cat([(first[k] - second[k]).abs().flatten() for k in first])
    assert diffs.max() < 2.5e-3 and (diffs < 1e-4).float().mean() > 0.99, (diffs.max(), (diffs < 1e-4).float().mean())
