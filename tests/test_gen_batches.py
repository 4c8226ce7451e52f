"""How `sana gen` batches a prompt's seeds: up to a few images a batch on a GPU, halved until the memory plan fits,
one a batch on a CPU; each batch saved before the next starts."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from sana_cli.image_settings import MAX_IMAGES_A_BATCH, images_a_batch
from tests.cli_helpers import run_sana


def _plans(fits_up_to: int):
    asked = []

    def plan_for(count: int):
        asked.append(count)
        return SimpleNamespace(fits=count <= fits_up_to, count=count)

    return plan_for, asked


@pytest.mark.parametrize("most, fits_up_to, expected", [(16, 16, MAX_IMAGES_A_BATCH), (16, 2, 2), (16, 0, 1),
                                                        (3, 3, 3), (1, 0, 1)])
def test_batches_on_a_gpu_fit_the_plan(most, fits_up_to, expected):
    plan_for, asked = _plans(fits_up_to)
    whole = plan_for(most)
    count, plan = images_a_batch(most, SimpleNamespace(type="cuda"), whole, plan_for)
    assert count == expected and plan.count == expected  # the plan returned is the batch's own


def test_one_image_a_batch_on_a_cpu():
    plan_for, _ = _plans(64)
    count, plan = images_a_batch(8, SimpleNamespace(type="cpu"), plan_for(8), plan_for)
    assert count == 1 and plan.count == 1


def test_num_makes_one_batch_an_image_on_the_cpu(tmp_path):
    result = run_sana("gen", "a small red circle on the left on a white background", "--model", "nano", "--num", "2",
                      "--seed", "9", "--steps", "2", "-o", f"{tmp_path}/", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    files = sorted(tmp_path.glob("*.png"))
    records = [json.loads(run_sana("info", str(f), "--json").stdout) for f in files]
    assert sorted(r["seed"] for r in records) == [9, 10]
    assert all(r["extra"]["images_in_batch"] == 1 for r in records)
