"""`sana video` through the installed entry point: frames against diffusers, the clip's metadata (`sana info`,
`--from`), overwriting, a dry run from the registry, and every bad input as one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.cli_helpers import assert_one_line_error, psnr, run_sana
from tests.tiny_video_pipeline import build_pipeline, first_frame

COMMON = ("--device", "cpu", "--dtype", "fp32")
TINY = ("--res", "64x32", "--frames", "9", "--steps", "3")


@pytest.fixture(autouse=True)
def one_thread_count(monkeypatch):
    """Tests here compare frames across processes; left to choose, each process takes the cores idle when it starts,
    and another thread count sums in another order."""
    monkeypatch.setenv("SANA_THREADS", "1")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-video")
    return build_pipeline(path, "wan", seed=3), path


def _frames_folder(folder) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("frame_*.png"))])


@pytest.mark.slow
def test_every_frame_matches_diffusers(tiny, tmp_path):
    pipe, model_dir = tiny
    result = run_sana("video", "A Dog running", "--model", str(model_dir), *TINY, "--cfg", "5", "--seed", "4",
                      "--negative", "static", "--format", "png", "-o", f"{tmp_path}/", *COMMON)
    assert result.returncode == 0, result.stderr
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert folder.name == "a-dog-running-4"
    ref = pipe("A Dog running motion score: 30.", negative_prompt="static", num_inference_steps=3, guidance_scale=5.0,
               height=32, width=64, frames=9, generator=torch.Generator().manual_seed(4), use_resolution_binning=False,
               ).frames[0]
    ours = _frames_folder(folder)
    assert ours.shape == (9, 32, 64, 3)
    for index, (a, b) in enumerate(zip(ours, ref)):
        assert psnr(a, np.asarray(b)) >= 45, f"frame {index}"


@pytest.mark.slow
def test_image_to_video_mp4_records_and_replays(tiny, tmp_path):
    from sana.outputs import file_sha256, read_clip

    _, model_dir = tiny
    image = tmp_path / "first.png"
    first_frame(64, 32).save(image)
    clip = tmp_path / "clip.mp4"
    args = ("video", "a bird flying", "--image", str(image), "--model", str(model_dir), *TINY, "--seed", "9",
            "--motion-score", "12", "--fps", "8", "-o", str(clip), *COMMON)
    result = run_sana(*args)
    assert result.returncode == 0, result.stderr
    meta = json.loads(run_sana("info", str(clip), "--json").stdout)
    assert (meta["frames"], meta["fps"], meta["seed"], meta["sampler"], meta["flow_shift"]) == (9, 8.0, 9, "flow-euler", 8.0)
    assert meta["prompt"] == "a bird flying" and meta["family"] == "video"
    assert meta["extra"]["motion_score"] == 12 and meta["extra"]["image_sha256"] == file_sha256(image)
    assert meta["extra"]["mode"] == "image-to-video" and "predicted peak" in meta["extra"]["memory"]
    assert meta["extra"]["vae_dtype"] == "fp32"
    frames, fps = read_clip(clip)
    assert frames.shape == (9, 32, 64, 3) and fps == 8.0

    # An existing clip is never replaced without --force: refused before anything loads.
    before = clip.read_bytes()
    assert "exists" in assert_one_line_error(run_sana(*args))
    assert clip.read_bytes() == before

    # --from replays the record (the first frame included) and --force overwrites: the same frames again.
    result = run_sana("video", "--from", str(clip), "-o", str(clip), "--force", *COMMON)
    assert result.returncode == 0, result.stderr
    again, _ = read_clip(clip)
    assert np.array_equal(again, frames)
    assert json.loads(run_sana("info", str(clip), "--json").stdout)["extra"]["image_sha256"] == file_sha256(image)

    # Explicit flags win over the record.
    result = run_sana("video", "--from", str(clip), "--frames", "17", "--fps", "12", "--dry-run", *COMMON)
    assert result.returncode == 0, result.stderr
    assert "1 clip(s) of 17 frames at 12 fps (1.42 s), 64x32" in result.stdout


def test_dry_run_plans_480p_from_the_registry_without_weights(tmp_path):
    result = run_sana("video", "x", "--model", "sana-video-2b-480p", "--frames", "80", "--max-vram", "16G",
                      "--dry-run", cwd=tmp_path, env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert result.returncode == 0, result.stderr
    assert "80 frames snapped to 81" in result.stderr
    for expected in ("1 clip(s) of 81 frames at 16 fps (5.06 s), 832x480", "memory plan: sana-video-2b-480p",
                     "transformer (2.06B params)", "predicted peak"):
        assert expected in result.stdout, expected
    assert not (tmp_path / "hub").exists() and not list(tmp_path.iterdir())


def test_image_to_video_takes_the_first_frames_shape_unless_res_says(tmp_path):
    image = tmp_path / "portrait.png"
    first_frame(480, 832).save(image)
    common = ("video", "x", "--model", "sana-video-2b-480p", "--image", str(image), "--dry-run")
    env = {"HF_HUB_CACHE": str(tmp_path / "hub")}
    result = run_sana(*common, env=env)
    assert result.returncode == 0, result.stderr
    assert "480x832" in result.stdout and "the shape of the 480x832 first frame" in result.stderr
    assert "stretched" not in result.stderr
    result = run_sana(*common, "--res", "832x480", env=env)  # asked for: kept, and the stretch said
    assert result.returncode == 0, result.stderr
    assert "832x480" in result.stdout and "first frame is stretched to 832x480" in result.stderr
    result = run_sana(*common, "--res", "480p", env=env)  # a size class: at the frame's shape
    assert result.returncode == 0, result.stderr
    assert "480x832" in result.stdout and "stretched" not in result.stderr


def test_a_prompts_file_records_the_models_load_once(tiny, tmp_path):
    """The model loads once for the run: the first batch's clips record the load, the later ones 0 (as `sana
    gen` records it), so summing a folder's load times gives the run's."""
    from sana.outputs import read_metadata

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    result = run_sana("video", "--prompts", str(prompts), "--model", str(tiny[1]), "--res", "64x32", "--frames", "9",
                      "--steps", "1", "-o", f"{tmp_path / 'out'}/", "--json", *COMMON)
    assert result.returncode == 0, result.stderr
    paths = [json.loads(line)["path"] for line in result.stdout.splitlines()]
    loads = [read_metadata(Path(p)).timings["load"] for p in paths]
    assert len(loads) == 2 and loads[0] > 0 and loads[1] == 0


def test_prompts_file_dry_run_plans_every_line(tiny, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    lines = [{"prompt": "a cat, motion score: 10.", "seed": 1}, {"prompt": "a dog", "steps": 2, "num": 2}]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_sana("video", "--prompts", str(prompts), "--model", str(tiny[1]), "--res", "64x32", "--frames", "10",
                      "--dry-run", *COMMON)
    assert result.returncode == 0, result.stderr
    assert "10 frames snapped to 9" in result.stderr and "its own motion score" in result.stderr
    assert "1 clip(s) of 9 frames" in result.stdout and "2 clip(s) of 9 frames" in result.stdout
    assert "memory plan" in result.stdout and list(tmp_path.iterdir()) == [prompts]
    prompts.write_text(json.dumps({"prompt": "a cat", "pag": 2.0}) + "\n")
    assert "pag" in assert_one_line_error(run_sana("video", "--prompts", str(prompts), "--model", str(tiny[1]),
                                                   *COMMON))


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad-inputs")
    first_frame(64, 32).save(folder / "good.png")
    (folder / "corrupt.png").write_bytes((folder / "good.png").read_bytes()[:60])
    (folder / "text.png").write_text("not an image")
    return folder


@pytest.mark.parametrize("args, words", [
    (("--frames", "0"), "--frames 0"),
    (("--frames", "10000"), "--frames 10000"),
    (("--res", "70x100"), "multiple of 32"),
    (("--fps", "0"), "--fps 0"),
    (("--image", "{bad}/missing.png"), "not found"),
    (("--image", "{bad}/corrupt.png"), "not an image"),
    (("--image", "{bad}/text.png"), "not an image"),
    (("--motion-score", "high"), "motion-score"),
    (("--motion-score", "-5"), "--motion-score -5 is below 0"),
    (("--sampler", "scm"), "sampler"),
    (("--format", "avi"), "format"),
    (("--model", "no-such-model"), "unknown model"),
    (("--model", "nano"), "sana gen"),
    (("--vae-dtype", "fp64"), "unknown --vae-dtype 'fp64'"),
    (("--fp8",), "--fp8 needs an NVIDIA GPU"),
], ids=["frames-0", "frames-10000", "size", "fps-0", "image-missing", "image-corrupt", "image-not-an-image",
        "motion-score", "motion-score-negative", "sampler", "format", "unknown-model", "image-model", "vae-dtype", "fp8-on-a-cpu"])
def test_bad_input_is_one_line_and_writes_nothing(tiny, bad_files, args, words, tmp_path):
    _, model_dir = tiny
    args = tuple(a.replace("{bad}", str(bad_files)) for a in args)
    base = ("video", "a dog", "--model", str(model_dir), "--steps", "1", "-o", str(tmp_path / "x.mp4"), *COMMON)
    message = assert_one_line_error(run_sana(*base, *args, cwd=tmp_path))
    assert words in message
    assert list(tmp_path.iterdir()) == []


def test_gen_refuses_a_video_model_naming_sana_video(tiny, tmp_path):
    message = assert_one_line_error(run_sana("gen", "a dog", "--model", str(tiny[1]), "-o", str(tmp_path / "x.png"),
                                             *COMMON))
    assert "is a SANA-Video model" in message and "sana video" in message
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------------
# The built-in nano-video model: names, notices, failed saves, Ctrl-C and replays as a user meets them
# ------------------------------------------------------------------------------------------------------------------

NANO = ("--model", "nano-video", "--device", "cpu")
GRAMMAR_PROMPT = "a large red circle moving right on a white background"


def test_a_colon_name_in_the_current_folder_is_written_read_and_replayed(tmp_path):
    # ffmpeg reads a bare "take:2.mp4" as the protocol "take:"
    result = run_sana("video", GRAMMAR_PROMPT, *NANO, "--frames", "5", "--steps", "1", "--seed", "3",
                      "--crf", "30", "-o", "take:2.mp4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "nano-video was trained on 17-frame clips only" in result.stderr and "grammar" not in result.stderr
    meta = json.loads(run_sana("info", "take:2.mp4", "--json", cwd=tmp_path).stdout)
    assert (meta["frames"], meta["seed"], meta["extra"]["crf"]) == (5, 3, 30)  # the crf the MP4 was encoded at
    again = run_sana("video", "--from", "take:2.mp4", "-o", "again.mp4", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert json.loads(run_sana("info", "again.mp4", "--json", cwd=tmp_path).stdout)["extra"]["crf"] == 30
    replay = run_sana("video", "--from", "take:2.mp4", "--dry-run", "--json", cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr
    (clip,) = json.loads(replay.stdout)["clips"]
    assert (clip["seeds"], clip["frames"], clip["prompt"]) == ([3], 5, GRAMMAR_PROMPT)


def test_nano_video_notices_and_a_dry_run_as_one_json_object(tmp_path):
    result = run_sana("video", "a cat playing piano", *NANO, "--fps", "240", "--crf", "30", "-o", "x.gif",
                      "--dry-run", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)  # the whole of stdout: no table
    (clip,) = plan["clips"]
    assert (clip["frames"], clip["fps"], clip["format"], clip["motion_score"]) == (17, 50.0, "gif", None)
    assert plan["model"] == "nano-video" and plan["dry_run"] and "predicted peak" in plan["memory"]
    for words in ("'a cat playing piano' is not a caption of the moving-shapes grammar",
                  "a GIF cannot play faster than 50 fps", "240 fps is written and recorded as 50 fps",
                  "--crf sets the MP4 quality; GIF output ignores it"):
        assert words in result.stderr, words
    assert "trained on 17-frame clips" not in result.stderr  # the length it knows
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_an_output_folder_that_cannot_be_made_fails_before_any_work(tmp_path):
    # root passes every permission check there, yet nothing can be created in /proc
    message = assert_one_line_error(run_sana("video", GRAMMAR_PROMPT, *NANO, "-o", "/proc/sana-clips/", cwd=tmp_path))
    assert "cannot write to /proc/sana-clips" in message
    assert list(tmp_path.iterdir()) == []


def test_a_clip_that_cannot_be_saved_is_kept_in_the_temp_folder(tmp_path):
    from sana.outputs import read_clip, read_metadata

    fake = tmp_path / "ffmpeg"  # an ffmpeg that fails as on a full disk: the MP4 fails here and in the temp folder
    fake.write_text("#!/bin/sh\ncat > /dev/null\necho 'Error closing file: No space left on device' >&2\nexit 1\n")
    fake.chmod(0o755)
    temp = tmp_path / "tmp"
    temp.mkdir()
    result = run_sana("video", GRAMMAR_PROMPT, *NANO, "--frames", "5", "--steps", "1", "--seed", "4",
                      "-o", "out/x.mp4", cwd=tmp_path, env={"IMAGEIO_FFMPEG_EXE": str(fake), "TMPDIR": str(temp)})
    message = assert_one_line_error(result, after_progress=True)
    assert "could not save out/x.mp4: ffmpeg could not write the MP4: Error closing file: No space left on device" \
        in message
    (kept,) = [p for p in temp.iterdir() if p.name.startswith("sana-unsaved-")]
    assert kept.name.endswith("-x-mp4") and f"it is kept as PNG frames at {kept}" in message
    frames, fps = read_clip(kept)
    assert frames.shape == (5, 128, 128, 3) and fps == 8.0 and read_metadata(kept).seed == 4
    assert not (tmp_path / "out" / "x.mp4").exists()


def test_save_or_keep_clip_says_where_the_clip_is(tmp_path, monkeypatch):
    import os
    import tempfile

    from sana.errors import SanaError
    from sana.outputs import GenerationRecord, read_clip, read_metadata, save_video
    from sana_cli.clip_outputs import save_or_keep_clip

    frames = np.zeros((3, 32, 32, 3), np.uint8)
    record = GenerationRecord(prompt="p", seed=5)
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")

    def save(target, temp):
        return save_video(frames, target, record, fps=8, force=temp)

    assert save_or_keep_clip(save, tmp_path / "fine.gif") == tmp_path / "fine.gif"
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(SanaError) as caught:
        save_or_keep_clip(save, in_the_way / "clip")  # PNG frames where a file is in the way
    kept = tmp_path / "tmp" / f"sana-unsaved-{os.getpid()}-clip"
    assert str(caught.value).startswith(f"could not save {in_the_way / 'clip'}: ")
    assert str(caught.value).endswith(f"(it is kept at {kept})") and "\n" not in str(caught.value)
    assert read_clip(kept)[0].shape == (3, 32, 32, 3) and read_metadata(kept).seed == 5
    monkeypatch.setattr(tempfile, "tempdir", str(in_the_way / "tmp"))  # nowhere to keep it either: said so
    with pytest.raises(SanaError, match=r"could not save .*clip\.gif: .*and it could not be kept in "):
        save_or_keep_clip(save, in_the_way / "clip.gif")


def test_a_servers_mp4_is_written_in_the_format_asked_for(tmp_path):
    from sana.outputs import GenerationRecord, read_clip, read_metadata, save_video
    from sana_cli.clip_outputs import write_served_clip

    t = np.arange(9, dtype=np.uint8)[:, None, None, None]
    frames = np.broadcast_to(t * 20 + np.arange(64, dtype=np.uint8)[None, None, :, None], (9, 32, 64, 3)).copy()
    record = GenerationRecord(prompt="a dog", seed=2, family="video", width=64, height=32)
    data = save_video(frames, tmp_path / "served.mp4", record, fps=240).read_bytes()
    assert write_served_clip(tmp_path / "x.mp4", data, force=False).read_bytes() == data  # as it came
    gif = read_metadata(write_served_clip(tmp_path / "x.gif", data, force=False))
    assert (gif.seed, gif.frames, gif.fps) == (2, 9, 50.0) and "crf" not in gif.extra  # what the GIF plays
    back, fps = read_clip(write_served_clip(tmp_path / "x", data, force=False))
    assert back.shape == (9, 32, 64, 3) and fps == 240.0
    assert psnr(back, frames) >= 30


def test_ctrl_c_says_how_many_clips_were_saved(tmp_path):
    import os
    import signal
    import subprocess

    from tests.cli_helpers import sana_executable

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "NO_COLOR": "1"}
    process = subprocess.Popen([sana_executable(), "video", GRAMMAR_PROMPT, *NANO, "--num", "2", "--steps", "1000",
                                "-o", "clips/"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    lines = []
    for line in process.stderr:  # the denoising has started: 1000 steps leave it far from done
        lines.append(line)
        if line.startswith("denoise"):
            break
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=300)
    assert process.returncode == 130, "".join(lines) + rest
    assert "error: interrupted: 0 of 2 clips saved (--skip-existing makes the rest)" in rest
    assert "Traceback" not in rest and not (tmp_path / "clips").exists()


def test_replaying_an_image_to_video_clip_from_another_folder(tmp_path):
    from sana.outputs import read_clip, read_metadata, save_video

    clips, elsewhere = tmp_path / "clips", tmp_path / "elsewhere"
    clips.mkdir()
    elsewhere.mkdir()
    first_frame(128, 128).save(clips / "sq.png")
    result = run_sana("video", GRAMMAR_PROMPT, *NANO, "--image", "sq.png", "--frames", "5", "--steps", "1",
                      "-o", "i2v.mp4", cwd=clips)
    assert result.returncode == 0, result.stderr
    record = read_metadata(clips / "i2v.mp4")
    assert record.extra["image"] == str((clips / "sq.png").resolve())  # absolute: found from any folder
    replay = run_sana("video", "--from", "../clips/i2v.mp4", "--dry-run", cwd=elsewhere)
    assert replay.returncode == 0 and "differs" not in replay.stderr, replay.stderr

    # A record made before paths were stored absolute: its relative path is found beside the clip.
    record.extra["image"] = "sq.png"
    frames, _ = read_clip(clips / "i2v.mp4")
    save_video(frames, clips / "old.mp4", record, fps=record.fps)
    replay = run_sana("video", "--from", "../clips/old.mp4", "--dry-run", cwd=elsewhere)
    assert replay.returncode == 0 and "differs" not in replay.stderr, replay.stderr

    (clips / "sq.png").unlink()  # gone: the error says the path came from the record
    message = assert_one_line_error(run_sana("video", "--from", "../clips/old.mp4", "--dry-run", cwd=elsewhere))
    assert "--image sq.png (from the record of ../clips/old.mp4) not found" in message and "pass --image" in message
    assert list(elsewhere.iterdir()) == []


# ------------------------------------------------------------------------------------------------------------------
# What a user met: --force on a frames folder holding their file, a 2-frame clip's notices, the no-prompt hint
# ------------------------------------------------------------------------------------------------------------------

SQUARE_PROMPT = "a small green square moving up on a white background"


def test_force_never_deletes_a_file_the_user_put_in_a_frames_folder(tmp_path):
    from sana.outputs import GenerationRecord, save_video

    from sana.outputs.naming import prompt_stem

    folder = tmp_path / "mine" / f"{prompt_stem(SQUARE_PROMPT)}-1"  # where the run below writes its frames
    save_video(np.zeros((9, 32, 32, 3), np.uint8), folder, GenerationRecord(prompt=SQUARE_PROMPT, seed=1), fps=8)
    (folder / "my_edit.txt").write_text("mine")
    args = ("video", SQUARE_PROMPT, *NANO, "--seed", "1", "--steps", "1", "-o", "mine/", "--format", "png", "--force")
    result = run_sana(*args, "--frames", "9", cwd=tmp_path)
    message = assert_one_line_error(result)  # refused before the model loads
    assert "my_edit.txt" in message and "move it out" in message and "another -o" in message
    assert (folder / "my_edit.txt").read_text() == "mine" and len(list(folder.glob("frame_*.png"))) == 9

    # Only sana's files there: --force replaces them, and the earlier, longer clip leaves no frames behind.
    (folder / "my_edit.txt").unlink()
    result = run_sana(*args, "--frames", "5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["clip.json", *(f"frame_{i:05d}.png" for i in range(5))]
    assert list((tmp_path / "mine").iterdir()) == [folder]


def test_a_forced_save_replaces_only_a_folder_of_sanas_frames(tmp_path):
    from sana.errors import SanaError, UsageError
    from sana.outputs import GenerationRecord, read_clip, save_video

    record = GenerationRecord(prompt="p", seed=1)
    folder = tmp_path / "clip"
    save_video(np.zeros((9, 32, 32, 3), np.uint8), folder, record, fps=8)
    (folder / "notes.txt").write_text("mine")
    (folder / "frame_edit.png").write_text("mine too")  # named like a frame, not as sana numbers them
    with pytest.raises(SanaError, match=r"clip holds frame_edit\.png and 1 more, which sana did not write") as caught:
        save_video(np.ones((5, 32, 32, 3), np.uint8), folder, record, fps=8, force=True)
    assert not isinstance(caught.value, UsageError)  # so `sana video` keeps the clip in the temp folder instead
    assert (folder / "notes.txt").read_text() == "mine" and len(list(folder.glob("frame_0*.png"))) == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]  # no temporary left beside it

    plain = tmp_path / "plain"  # a file where the frames folder would go is not deleted either
    plain.write_text("mine")
    with pytest.raises(SanaError, match="is a file, not a folder of PNG frames"):
        save_video(np.ones((5, 32, 32, 3), np.uint8), plain, record, fps=8, force=True)
    assert plain.read_text() == "mine"

    (folder / "notes.txt").unlink()
    (folder / "frame_edit.png").unlink()
    save_video(np.ones((5, 32, 32, 3), np.uint8), folder, record, fps=8, force=True)
    assert read_clip(folder)[0].shape == (5, 32, 32, 3)


def test_a_two_frame_clip_says_two_were_asked(tmp_path):
    result = run_sana("video", SQUARE_PROMPT, *NANO, "--frames", "2", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 frames snapped to 1" in result.stderr
    assert "other lengths draw poorly (2 asked; --frames 17 matches)" in result.stderr
    assert "1 asked" not in result.stderr


def test_no_prompt_hint_has_no_nested_brackets(tmp_path):
    message = assert_one_line_error(run_sana("video", *NANO, cwd=tmp_path))
    assert message == 'error: no prompt given (give a prompt: sana video "a prompt", or --prompts FILE, or --from CLIP)'
    assert list(tmp_path.iterdir()) == []


LINE_ERRORS = {
    "cfg": ({"cfg": -1}, '"cfg" -1 must be a finite number >= 0'),
    "sampler": ({"sampler": "dpm++"}, "unknown sampler 'dpm++' for a video model"),
    "image": ({"image": "missing.png"}, '"image" missing.png not found'),
    "out-suffix": ({"out": "clip.txt"}, "cannot write '.txt' clips"),
    "out-png": ({"out": "clip.png"}, '"out" clip.png: PNG frames are written as one folder per clip'),
    "frames": ({"frames": 100000}, '"frames" 100000 is out of range'),
    "shift": ({"shift": -1}, '"shift" -1 must be a finite number > 0'),
}


@pytest.mark.parametrize("values, words", LINE_ERRORS.values(), ids=LINE_ERRORS.keys())
def test_a_prompts_file_value_error_names_the_file_and_line(tmp_path, values, words):
    prompts = tmp_path / "clips.jsonl"
    lines = [{"prompt": GRAMMAR_PROMPT}, {"prompt": GRAMMAR_PROMPT, **values}]
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    message = assert_one_line_error(run_sana("video", "--prompts", "clips.jsonl", *NANO, "--dry-run", cwd=tmp_path))
    assert message.startswith("error: clips.jsonl line 2: ") and words in message, message


def test_sizes_far_from_nano_videos_get_a_notice_as_lengths_do(tmp_path):
    for res, noted in (("480p", "832x480"), ("4096x4096", "4096x4096"), ("32x32", "32x32")):
        result = run_sana("video", GRAMMAR_PROMPT, *NANO, "--res", res, "--dry-run", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert (f"note: {noted} is far from the 128x128 clips nano-video was trained on" in result.stderr
                and "--res 128x128 matches" in result.stderr), result.stderr
    near = run_sana("video", GRAMMAR_PROMPT, *NANO, "--res", "192x128", "--dry-run", cwd=tmp_path)
    assert near.returncode == 0 and "is far from" not in near.stderr, near.stderr


def test_help_speaks_of_clips_and_the_models_defaults():
    text = " ".join(run_sana("video", "--help").stdout.replace("│", " ").split())
    assert "Clips per prompt" in text and "Seed of the first clip" in text and "Images" not in text
    assert "default: the best SANA-Video model downloaded" in text
    assert "50 for SANA-Video, 20 for nano-video" in text and "6 for SANA-Video, 2 for nano-video" in text
