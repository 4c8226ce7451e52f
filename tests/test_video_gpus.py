"""`sana video --prompts FILE --gpus N`: the clips of one plan split across torchrun processes (two CPU processes
here), named as one process names them; the argument errors before torch; a process that fails as one error line;
the launcher's stream handling on a small script."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from sana_cli.launch import PREFIX_TEMPLATE_ENV, RANK_PREFIX, _failure, run_torchrun
from tests.cli_helpers import assert_one_line_error, psnr, run_sana
from tests.tiny_video_pipeline import build_pipeline

COMMON = ("--device", "cpu", "--dtype", "fp32")
TINY = ("--res", "64x32", "--frames", "9", "--steps", "2", "--seed", "4", "--format", "png")
# Two lines with one slug: the second clip is "-2" whichever process makes it.
PROMPTS = "a dog running\na cat sleeping\nA dog running!\na bird flying\n"


def _frames(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])


def _heavy_imports(stderr: str) -> list[str]:
    """Heavy top-level packages in `PYTHONPROFILEIMPORTTIME` output ("import time: self | cumulative | name")."""
    names = [line.rsplit("|", 1)[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")]
    return sorted({name for name in names if name in ("torch", "diffusers", "transformers")})


# -- argument errors: one line, before torch, nothing launched ----------------------------------------------------

@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS)
    return path


@pytest.mark.parametrize("args, words", [
    (("--prompts", "prompts.txt", "--gpus", "0"), "--gpus"),
    (("a dog", "--gpus", "2", "--device", "cpu"), "give --prompts FILE or --num N"),
    (("--prompts", "prompts.txt", "--gpus", "2", "--device", "mps"), "takes --device auto, cuda or cpu"),
    (("--prompts", "prompts.txt", "--gpus", "2"), "0 GPU(s) visible here (--device cpu runs 2 CPU processes)"),
    (("--prompts", "prompts.txt", "--gpus", "2", "--device", "cpu", "--server", "http://127.0.0.1:9"),
     "--server"),
    (("--prompts", "prompts.txt", "--gpus", "2", "--device", "cpu", "--force", "--skip-existing"), "contradict"),
    (("--prompts", "prompts.txt", "--gpus", "2", "--device", "cpu", "-o", "out/"), "exists"),
], ids=["zero", "one-clip", "device", "no-gpu", "server", "force-and-skip", "existing-output"])
def test_bad_gpus_arguments_are_one_line_before_torch(prompts, tmp_path, args, words):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a-cat-sleeping-7.mp4").write_bytes(b"a clip made before")
    result = run_sana("video", *args, "--seed", "7", "--model", "video-2b-480p", cwd=tmp_path,
                      env={"CUDA_VISIBLE_DEVICES": "", "PYTHONPROFILEIMPORTTIME": "1"})
    heavy = _heavy_imports(result.stderr)
    result.stderr = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("import time:"))
    assert words in assert_one_line_error(result)
    assert heavy == [] and "launching" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "prompts.txt"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a-cat-sleeping-7.mp4"]


# -- the launcher on a small script -------------------------------------------------------------------------------

SCRIPT = """
import os, signal, sys, time
rank = int(os.environ["RANK"])
sys.stdout.write(f"out {rank}\\n")  # one write a line: unbuffered, print() writes the text and the newline apart,
sys.stdout.flush()                 # and the two ranks' halves can interleave on the shared stdout
print(f"step {rank}", file=sys.stderr, flush=True)
print("note: said by both", file=sys.stderr, flush=True)
time.sleep(0.5)
if rank == 1:
    if sys.argv[1] == "error":
        print("error: rank one broke (a hint)", file=sys.stderr, flush=True)
        sys.exit(2)
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(30)  # stopped by torchrun once rank 1 has ended
"""


@pytest.mark.parametrize("mode, message", [
    ("error", "process 1 of 2 failed: rank one broke (a hint)"),
    ("killed", "process 1 of 2 was killed by signal 9"),
])
def test_a_failing_process_is_reported_by_rank_without_torchruns_report(tmp_path, capfd, mode, message):
    script = tmp_path / "work.py"
    script.write_text(SCRIPT)
    code, errors, report = run_torchrun(2, [str(script), mode], {PREFIX_TEMPLATE_ENV: RANK_PREFIX},
                                        tmp_path / "logs")
    out, err = capfd.readouterr()
    assert code != 0 and _failure(errors, report, code, 2) == message
    assert sorted(out.split("\n")[:2]) == ["out 0", "out 1"]
    assert "[rank 0] step 0" in err and "[rank 1] step 1" in err and err.count("note: said by both") == 1
    assert "error" not in err and "Traceback" not in err and "Traceback" in report


# -- two CPU processes against one (tiny random pipeline) ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-video")
    build_pipeline(path, "wan", seed=3)
    return path


@pytest.mark.slow
def test_two_processes_make_the_clips_one_process_makes(tiny, prompts, tmp_path):
    args = ("video", "--prompts", str(prompts), "--model", str(tiny), *TINY, *COMMON)
    one = run_sana(*args, "-o", f"{tmp_path / 'one'}/")
    assert one.returncode == 0, one.stderr
    two = run_sana(*args, "-o", f"{tmp_path / 'two'}/", "--gpus", "2")
    assert two.returncode == 0, two.stderr
    assert "launching 2 processes" in two.stderr and "[rank 0] loading" in two.stderr
    assert "[rank 1] loading" in two.stderr and "2 processes made 4 clips" in two.stderr
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["a-bird-flying-4", "a-cat-sleeping-4", "a-dog-running-4", "a-dog-running-4-2"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    assert sorted(two.stdout.split()) == sorted(f"{tmp_path / 'two'}/{name}" for name in names)
    for name in names:  # the same noise and steps; each process picks its own thread count, so float sums may
        # be ordered differently: close, not always to the bit
        ours, theirs = _frames(tmp_path / "one" / name), _frames(tmp_path / "two" / name)
        assert ours.shape == (9, 32, 64, 3) and theirs.shape == ours.shape
        for index, (a, b) in enumerate(zip(ours, theirs)):
            assert psnr(a, b) >= 40, f"{name} frame {index}"

    # --skip-existing: the plan keeps the names and makes what is missing, one clip a process.
    for name in ("a-cat-sleeping-4", "a-dog-running-4-2"):
        shutil.rmtree(tmp_path / "two" / name)
    again = run_sana(*args, "-o", f"{tmp_path / 'two'}/", "--gpus", "2", "--skip-existing")
    assert again.returncode == 0, again.stderr
    assert "2 of the run's clips exist already" in again.stderr and "2 processes made 2 clips" in again.stderr
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    assert psnr(_frames(tmp_path / "one" / "a-dog-running-4-2"), _frames(tmp_path / "two" / "a-dog-running-4-2")) >= 40


@pytest.mark.slow
def test_processes_that_cannot_load_the_model_end_in_one_error_line(tiny, prompts, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    header = int.from_bytes(weights.read_bytes()[:8], "little")
    weights.write_bytes(weights.read_bytes()[:8 + header + 64])  # the header reads, the tensors are cut short
    result = run_sana("video", "--prompts", str(prompts), "--model", str(broken), *TINY, *COMMON,
                      "-o", f"{tmp_path / 'out'}/", "--gpus", "2")
    message = assert_one_line_error(result, after_progress=True)
    assert message.startswith("error: process 0 of 2 failed") and "corrupt or truncated" in message
    assert message.endswith("0 of 4 clips written") and not (tmp_path / "out").exists()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_make_the_clips_one_gpu_makes(tiny, prompts, tmp_path):
    args = ("video", "--prompts", str(prompts), "--model", str(tiny), *TINY, "--device", "cuda", "--dtype", "fp32")
    one = run_sana(*args, "-o", f"{tmp_path / 'one'}/")
    assert one.returncode == 0, one.stderr
    two = run_sana(*args, "-o", f"{tmp_path / 'two'}/", "--gpus", "2", env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert two.returncode == 0, two.stderr
    assert "2 processes made 4 clips" in two.stderr and "on cuda:1" in two.stderr
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert len(names) == 4 and sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:
        for a, b in zip(_frames(tmp_path / "one" / name), _frames(tmp_path / "two" / name)):
            assert psnr(a, b) >= 40, name
