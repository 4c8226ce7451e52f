"""`sana gen --best-of N`: each image the best of N candidates by a reward, on the nano model and its shapes
checker; the record keeps the chosen seed (what `--from` replays) and every candidate's score; bad flags fail before
torch is imported."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.cli_helpers import assert_one_line_error, psnr, run_sana

# Two objects at two steps with CFG 12, far from how the nano model samples well (it draws them right at two
# CFG-free steps): its seeds score apart (partial credit per object), so the choice is seen, whichever nano model
# is shipped.
TWO_OBJECTS = "a small green circle on the left and a large blue square on the right on a black background"
ROUGH = ("--steps", "2", "--guidance", "12")


@pytest.fixture(autouse=True)
def one_thread_count(monkeypatch):
    """Pixels are compared across processes: one thread count sums in one order."""
    monkeypatch.setenv("SANA_THREADS", "1")


def test_candidate_seeds_never_overlap_across_outputs():
    from sana_cli.best_of import candidate_seeds

    assert candidate_seeds([7], 3) == [[7, 8, 9]]
    groups = candidate_seeds([10, 11, 12], 4)
    assert groups[0] == [10, 13, 16, 19] and groups[2] == [12, 15, 18, 21]
    assert len({s for g in groups for s in g}) == 12
    assert candidate_seeds([2**32 - 1], 2) == [[2**32 - 1, 0]]


def test_the_best_candidate_wins_and_ties_go_to_the_first(monkeypatch):
    import torch

    from sana.pipelines.image import ImageRequest, ImageResult
    from sana_cli.best_of import CANDIDATES_A_BATCH, choose_best

    shades = {3: 40, 4: 200, 5: 90, 6: 200, 7: 10}  # seed -> grey level; the reward is the brightness
    calls = []

    def generate(request):
        calls.append(list(request.seeds))
        return ImageResult([Image.new("RGB", (8, 8), (shades[s],) * 3) for s in request.seeds], {"denoise": 1.0})

    class Pipe:
        device = torch.device("cpu")

    def brightness(images, prompts, metadata):
        return images.mean(dim=(1, 2, 3)), {}

    request = ImageRequest(prompt="p", seeds=[3], width=8, height=8, steps=1, guidance=1.0, sampler="flow-dpm",
                           flow_shift=3.0)
    choice = choose_best(Pipe(), request, [3, 4, 5, 6, 7], brightness, generate)
    assert choice.seed == 4 and [s for s, _ in choice.scores] == [4, 6, 5, 3, 7]
    assert calls == [[3, 4, 5, 6], [7]] and CANDIDATES_A_BATCH == 4


@pytest.mark.slow
def test_best_of_keeps_the_best_candidate_and_from_replays_it(tmp_path):
    best = tmp_path / "best.png"
    result = run_sana("gen", TWO_OBJECTS, "--model", "nano", "--best-of", "6", "--seed", "11", *ROUGH, "-o", str(best),
                      "--device", "cpu", "--json")
    assert result.returncode == 0, result.stderr
    assert "best of 6 by shapes: seed" in result.stderr
    assert json.loads(result.stdout)["best_of"]["candidates"] == 6
    meta = json.loads(run_sana("info", str(best), "--json").stdout)
    chosen = meta["extra"]["best_of"]
    scores = [score for _, score in chosen["scores"]]
    assert chosen["candidates"] == 6 and chosen["reward"] == "shapes" and len(scores) == 6
    assert sorted(s for s, _ in chosen["scores"]) == list(range(11, 17))  # one output: seeds 11 .. 16
    assert scores == sorted(scores, reverse=True) and chosen["score"] == scores[0] and scores[0] > scores[-1]
    assert meta["seed"] == chosen["scores"][0][0]

    again = tmp_path / "again.png"
    result = run_sana("gen", "--from", str(best), "-o", str(again), "--device", "cpu", "--json")
    assert "best_of" not in json.loads(result.stdout)  # a replay draws the chosen seed alone
    assert result.returncode == 0, result.stderr
    # The candidates ran four to a forward, the replay alone: the same image up to the batch's rounding.
    assert psnr(np.asarray(Image.open(again)), np.asarray(Image.open(best))) >= 40


def test_bad_best_of_flags_fail_before_torch(tmp_path):
    assert "--reward chooses among" in assert_one_line_error(run_sana("gen", "x", "--reward", "shapes"))
    assert "not downloaded" in assert_one_line_error(run_sana(
        "gen", "x", "--model", "nano", "--best-of", "4", "--reward", "clip", env={"HF_HUB_CACHE": str(tmp_path)}))
    script = ("import sys\nfrom sana_cli.app import app\n"
              "for args in sys.argv[1:]:\n"
              "    try:\n        app(args.split('|'), standalone_mode=False)\n    except Exception as exc:\n"
              "        print(type(exc).__name__)\n"
              "print('torch' in sys.modules)\n")
    runs = ["gen|x|--best-of|4|--reward|nope", "gen|x|--best-of|3|--server|http://127.0.0.1:9"]
    result = subprocess.run([sys.executable, "-c", script, *runs], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["UsageError", "UsageError", "False"], result.stdout + result.stderr


@pytest.mark.slow
def test_shapes_score_scores_each_prompts_best_candidate(tmp_path):
    rows = tmp_path / "rows.jsonl"
    result = run_sana("shapes", "score", "--model", "nano", "--num", "2", "--num-heldout", "2", "--seed", "7",
                      "--best-of", "2", "--rows", str(rows), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "best of 2 by shapes" in result.stdout and "an upper bound" in result.stderr
    assert len(rows.read_text().splitlines()) == 4
    assert "--best-of is for images" in assert_one_line_error(run_sana("shapes", "score", "--model", "nano-video",
                                                                       "--video", "--best-of", "2"))
