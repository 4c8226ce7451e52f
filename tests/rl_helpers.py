"""Shared pieces of the RL tests: a tiny base model and the input files (fixtures, imported by the test modules),
a plugin file of rewards, a prompts file, the run folder's records."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.tiny_pipeline import build_pipeline

PLUGIN = """
import os
CALLS = [0]
def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3)) + images[:, 0].mean(dim=(1, 2))
def flaky(images, prompts):
    CALLS[0] += 1
    if CALLS[0] > int(os.environ.get("FAIL_AFTER", "1000000")):
        raise ValueError("the judge is asleep")
    return images.mean(dim=(1, 2, 3))
def nan(images, prompts):
    return images.mean(dim=(1, 2, 3)) * float("nan")
def only_images(images):
    return images.mean(dim=(1, 2, 3))
"""


def write_inputs(folder: Path) -> Path:
    """prompts.txt (three prompts) and plug.py (the rewards above) in `folder`."""
    (folder / "prompts.txt").write_text("a red circle\na blue square\na photo of a cat\n")
    (folder / "plug.py").write_text(PLUGIN)
    return folder


@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> Path:
    """A tiny random SANA pipeline folder, one a test module."""
    path = tmp_path_factory.mktemp("base")
    build_pipeline(path)
    return path


@pytest.fixture()
def files(tmp_path) -> Path:
    """A test's folder with prompts.txt and plug.py."""
    return write_inputs(tmp_path)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def checkpoint_state(out: Path) -> dict:
    """The newest checkpoint's weights, EMA and old policy."""
    from safetensors.torch import load_file

    step = sorted((out / "checkpoints").iterdir())[-1]
    return {name: load_file(str(step / name)) for name in ("weights.safetensors", "ema.safetensors", "old.safetensors")
            if (step / name).exists()}
