"""`sana shapes ... --video`: the moving-shapes grammar of the nano video model: datasets, adherence scores, its
autoencoder and its folder. `sana_cli/shapes.py` owns the commands and hands `--video` runs to these bodies."""

from __future__ import annotations

from pathlib import Path

from sana.errors import SanaError, UsageError

from . import console
from .shapes_scoring import check_outputs, print_scores, write_score_rows


def make_clips(out: Path, num: int, seed: int, two_objects: float, fmt: str, progress) -> None:
    """Steps 2-3 of `sana shapes make --video` (the folder is checked and emptied by the caller)."""
    from sana.nano.moving_shapes import CLIP_FORMATS, FPS, FRAMES, SIDE, clear_video_dataset, write_video_dataset

    if fmt not in CLIP_FORMATS:
        raise UsageError(f"unknown --format '{fmt}'", f"use {', '.join(CLIP_FORMATS)} (png: a folder of frames a clip)")
    if out.is_dir():
        clear_video_dataset(out)
    bar, task = progress("rendering", num)
    with bar:
        write_video_dataset(out, num, seed, two_object_fraction=two_objects, fmt=fmt,
                            on_progress=lambda done, total: bar.update(task, completed=done))
    console.info(f"{num} clips of {FRAMES} frames at {FPS} fps, {SIDE}x{SIDE} ({fmt}), seed {seed}")
    console.out.print(str(out), highlight=False)


def clip_targets(paths: list[Path]) -> list[tuple[Path, str | None]]:
    """(path, why it is not checked, or None) for each clip to check: each path given (a folder of frame_*.png
    files, as `sana` writes PNG frames, is one clip), a folder's files as `sana finetune` finds clips (recursively;
    hidden files and caption sidecars left out)."""
    from sana.training.video_data import find_clips

    targets = []
    for path in paths:
        if not path.is_dir() or any(path.glob("frame_*.png")):
            targets.append((path, None))
            continue
        clips, images, others = find_clips(path)
        found = [(p, None) for p in sorted((*clips, *images, *others))]
        targets += found or [(path, "nothing to check in this folder")]
    return targets


def check_clip_file(path: Path, scene_for):
    """One clip (a file or a frames folder) checked against `scene_for(path)`, asked only once the clip has been
    read."""
    from sana.nano.motion_adherence import check_clip
    from sana.outputs import read_clip

    if not path.exists():
        raise SanaError("not found")
    try:
        frames, _ = read_clip(path)
    except (SanaError, OSError, ValueError):
        raise SanaError("not a clip (it cannot be read)") from None
    if len(frames) < 2:
        raise SanaError("a still image, not a clip (check images without --video)")
    return check_clip(frames, scene_for(path))


def score_clips(model: str, transformer: str | None, num: int, seed: int, steps: int | None, cfg: float | None,
                out: Path | None, grid: int, rows: Path | None, device: str, dtype: str, force: bool, progress) -> None:
    """`sana shapes score --video`: clips for fresh prompts of the grammar at the model's defaults, checked."""
    from sana.nano.motion_adherence import ATTRIBUTES, VIDEO_SETS, clip_grid, score_video_model

    from .generation import quiet_libraries

    # 1. Outputs first: an existing file fails before the model loads.
    check_outputs(out, rows, force, (".gif", ".mp4", ".webp"), "clip", "use a .gif, .mp4 or .webp name")

    # 2. Load the model the way `sana video` does, with its defaults.
    quiet_libraries()
    pipe, request_for, fps = load_clip_generator(model, transformer, steps, cfg, device, dtype)

    # 3. Generate and check, one prompt and seed at a time; keep a sample for the grid.
    keep_every = max(1, num // grid)
    samples: list = []
    done: list = []
    bar, task = progress("scoring", num)

    def generate(prompts: list[str], seeds: list[int]) -> list:
        return [pipe.generate(request_for(p, s)).videos[0].numpy() for p, s in zip(prompts, seeds)]

    def seen(entry, clip) -> None:
        done.append(entry)
        bar.update(task, completed=len(done))
        if (len(done) - 1) % keep_every == 0 and len(samples) < grid:
            samples.append((clip, entry.result.fully_correct))

    with bar:
        report = score_video_model(generate, num, seed, on_result=seen)

    # 4. The table, then the optional animated grid and rows.
    print_scores(report, f"prompt adherence (clips), {model}", VIDEO_SETS, (*ATTRIBUTES, "background", "no_extras"),
                 "clips")
    if out is not None:
        from sana.outputs import GenerationRecord, save_video

        out.parent.mkdir(parents=True, exist_ok=True)
        frames = clip_grid([clip for clip, _ in samples], [ok for _, ok in samples])
        record = GenerationRecord(prompt=f"sana shapes score --video --model {model} --seed {seed}", model=model)
        save_video(frames, out, record, fps=fps, force=True)
        console.info(f"grid of {len(samples)} clips: {out}")
    if rows is not None:
        write_score_rows(rows, report)


def load_clip_generator(model: str, transformer: str | None, steps: int | None, cfg: float | None, device_name: str,
                        dtype_name: str):
    """(pipeline, request_for(prompt, seed), fps) for a video model argument, with its own sampling defaults."""
    from sana.components import check_components, family_from_index, model_index, scheduler_config
    from sana.device import pick_device, pick_dtype
    from sana.hub import resolve_model, transformer_config
    from sana.pipelines.video import VideoPipeline, VideoRequest

    from sana.registry import clip_defaults

    resolved = resolve_model(model)
    family = (resolved.spec.family if resolved.spec else None) or family_from_index(model_index(resolved.path))
    if family != "video":
        raise UsageError(f"{model} is not a SANA-Video model", "scoring clips needs a video model, e.g. nano-video")
    check_components(resolved.path)
    if transformer and not Path(transformer).expanduser().exists():
        raise UsageError(f"--transformer {transformer} does not exist")
    defaults = clip_defaults(resolved.spec, scheduler_config(resolved.path), transformer_config(resolved.path),
                             resolved.path)
    device = pick_device(device_name)
    dtype = pick_dtype(dtype_name, device)
    console.info(f"loading {model} on {device}")
    pipe = VideoPipeline.from_pretrained(resolved.path, dtype=dtype, device=device, transformer_path=transformer)

    def request_for(prompt: str, seed: int):
        return VideoRequest(prompt=prompt, seeds=[seed], width=defaults.width, height=defaults.height,
                            frames=defaults.frames, steps=steps or defaults.steps,
                            guidance=defaults.cfg if cfg is None else cfg, sampler=defaults.sampler,
                            flow_shift=defaults.shift, motion_score=defaults.motion_score)

    return pipe, request_for, defaults.fps


def train_video_vae(out: Path, steps: int, batch: int, lr: float, seed: int, max_minutes: float | None,
                    eval_clips: int, device: str, bf16: bool = True, start: Path | None = None,
                    crop: tuple[int | None, int | None] = (None, None), cuda_graph: bool = True) -> None:
    """`sana shapes train-vae --video`: the nano video model's Wan-layout autoencoder on the moving-shapes grammar."""
    from sana.nano.autoencoder import VaeTrainConfig
    from sana.nano.video_autoencoder import save_video_vae, train_video_vae as train

    from .shapes import train_and_save_autoencoder

    # 1. Settings (the output folder was checked by the caller).
    # A clip step's cost varies widely between machines, so under --max-minutes the cosine follows the clock.
    cfg = VaeTrainConfig(steps=steps, batch=batch, lr=lr, seed=seed, holdout=(), eval_images=eval_clips,
                         max_seconds=None if max_minutes is None else 60 * max_minutes,
                         anneal_by_time=max_minutes is not None, bf16=bf16, crop_frames=crop[0], crop_side=crop[1],
                         cuda_graph=cuda_graph)
    cfg.log_every = max(1, min(200, steps // 20))
    # 2. Train, logging the loss every few hundred steps; save.
    path, report = train_and_save_autoencoder(out, "nano video autoencoder", train, save_video_vae, cfg, device,
                                              start, "AutoencoderKLWan")
    console.info(f"{report.steps_done} steps in {report.seconds:.0f}s; reconstruction {report.psnr:.1f} dB PSNR, "
                 f"{report.adherence:.1f}% of clips fully correct")
    console.out.print(str(path), highlight=False)


def build_video(out: Path, vae: Path, transformer: Path | None, text_from: Path | None, seed: int, shift: float,
                dtype_name: str):
    """`sana shapes build --video`: the nano video model's folder (returns the build and its size budget)."""
    from sana.device import DTYPES
    from sana.embedded import embedded_model_dir
    from sana.nano.video_build import SIZE_BUDGET, write_nano_video_model

    text_from = text_from or embedded_model_dir("nano")
    if text_from is None:
        raise UsageError("no nano model to take the text encoder from", "pass --text-from a nano model folder")
    build = write_nano_video_model(out, vae, text_from, transformer=transformer, seed=seed, flow_shift=shift,
                                   dtype=DTYPES[dtype_name], check_budget=dtype_name != "fp32")
    return build, SIZE_BUDGET
