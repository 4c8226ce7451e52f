"""Running the installed `sana` entry point in tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np


def sana_executable() -> str:
    beside_python = Path(sys.executable).with_name("sana")
    found = str(beside_python) if beside_python.exists() else shutil.which("sana")
    assert found, "the sana entry point is not installed"
    return found


def same_threads() -> dict[str, str]:
    """The environment that makes a `sana` process compute on as many threads as this one: left to choose, it
    takes the cores idle when it starts, and another thread count sums in another order, while the tests compare
    pixels between processes (a served clip and `sana world`'s, a replay and its original) bit for bit; one
    level's difference in a frame can turn an H.264 block's coding, and then the block, a long way."""
    import torch

    return {"SANA_THREADS": str(torch.get_num_threads())}


def run_sana(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1", "COLUMNS": "200", **same_threads(),
                **(env or {})}
    return subprocess.run([sana_executable(), *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *, after_progress: bool = False) -> str:
    """Exit != 0, no traceback, and the error in one line: the only line, or (for errors raised once a model
    has loaded, `after_progress`) the only `error:` line and the last one."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if after_progress:
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    else:
        assert len(lines) == 1, result.stderr
    return lines[-1]


def psnr(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
