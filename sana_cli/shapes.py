"""`sana shapes`: the synthetic shapes grammar the nano model learns: datasets, adherence scores, its parts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, List, Optional

import typer
from rich.table import Table

from sana.errors import SanaError, UsageError

from . import console
from . import options as opt
from .shapes_scoring import check_outputs, print_scores, write_score_rows

shapes_app = typer.Typer(help="The shapes grammar of the nano model: make datasets, score models, build the model.",
                         no_args_is_help=True)

CLIP_NOT_IMAGE = "a clip (check clips with --video)"

Holdout = Annotated[bool, typer.Option("--holdout/--no-holdout",
                                       help="Leave the held-out colour-shape pairs out of the data.")]


def _progress(description: str, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = console.progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           TimeRemainingColumn(), transient=True)
    return bar, bar.add_task(description, total=total)


def _empty_folder(path: Path, force: bool, what: str) -> None:
    from .run_output import check_output_dirs

    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} is a file, not a folder")
    try:  # a folder that cannot be written fails here, not with an OSError once the work is under way
        check_output_dirs([path / "x"])
    except UsageError as exc:
        raise UsageError(exc.message, f"choose another folder for the {what}") from None
    if path.is_dir() and any(path.iterdir()) and not force:
        raise UsageError(f"{path} is not empty", f"choose an empty folder for the {what}, or pass --force")


def _replaceable_dataset(path: Path) -> None:
    """--force replaces a dataset sana made, whole: a folder holding anything else is refused before any work, since
    deleting the user's files is never right and keeping them beside the new pairs makes a mixed dataset."""
    from sana.nano.shapes import made_dataset

    try:
        others = made_dataset(path)[1]
    except SanaError as exc:  # a frames clip holding a file of the user's
        raise UsageError(exc.message, "move it out of the folder, or choose another folder") from None
    if others:
        more = f" and {len(others) - 1} more" if len(others) > 1 else ""
        raise UsageError(f"{path} holds {others[0]}{more}, which sana did not write: --force replaces only a dataset "
                         "`sana shapes make` wrote", "move it out of the folder, or choose another folder")


def train_and_save_autoencoder(out: Path, what: str, train, save, cfg, device: str, start: Path | None,
                               class_name: str):
    """What both forms of `train-vae` do once their settings are made: load the `--start-from` autoencoder (a
    diffusers `class_name`), train with the loss logged, save to `out`; returns (the saved folder, the report)."""
    from sana.device import pick_device

    target = pick_device(device)
    console.info(f"training the {what} for {cfg.steps} steps on {target}" + (f", from {start}" if start else ""))
    earlier = None
    if start is not None:
        import diffusers
        import torch

        # fp32 master weights whatever the folder stores (the checked-in video autoencoder is fp16 on disk)
        earlier = getattr(diffusers, class_name).from_pretrained(start, torch_dtype=torch.float32)
    vae, report = train(cfg, device=target, vae=earlier, on_log=lambda row: console.info(
        f"step {row['step']:>6}  loss {row['loss']:.4f}  (l1 {row['l1']:.4f}, edge {row['edge']:.4f})  lr {row['lr']:.2e}"))
    return save(vae, report, out), report


def _start_autoencoder(path: Path, class_name: str) -> Path:
    """The diffusers folder of the autoencoder `--start-from` names (a training folder holding vae/, or vae/ itself),
    checked before torch loads: it must exist and hold a `class_name`."""
    folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
    config = folder / "config.json"
    if not config.is_file():
        raise UsageError(f"--start-from {path}: no autoencoder there", "give the folder of an earlier train-vae run")
    try:
        found = json.loads(config.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError):
        raise UsageError(f"--start-from {path}: {config.name} is not readable JSON") from None
    if found != class_name:
        raise UsageError(f"--start-from {path} holds {found}, not the {class_name} this run trains")
    return folder


@shapes_app.command("make")
def make_command(
    out: Annotated[Path, typer.Argument(help="Folder to write NNNNNN.png + NNNNNN.txt pairs and metadata.jsonl into.")],
    num: Annotated[int, typer.Option("--num", "-n", min=1, help="Number of image-caption pairs.")] = 1000,
    seed: Annotated[int, typer.Option("--seed", "-s", help="Sampling seed; pair i depends on (seed, i) only.")] = 0,
    holdout: Annotated[Optional[bool], typer.Option("--holdout/--no-holdout", help="Leave the held-out colour-shape pairs out of the data (images; default on). Clips use every pair.")] = None,
    two_objects: Annotated[float, typer.Option("--two-objects", min=0.0, max=1.0, help="Share of two-object scenes.")] = 0.5,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty folder (replacing an earlier dataset there).")] = False,
    video: Annotated[bool, typer.Option("--video", help="Clips of the moving-shapes grammar (128 px, 17 frames at 8 fps) instead of images.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="--video: mp4, gif, or png (a folder of frames a clip).")] = "mp4",
) -> None:
    """Write a training dataset of the shapes grammar (or with --video the moving-shapes grammar), in the folder
    format `sana finetune` reads."""
    from sana.nano.shapes import DEFAULT_HOLDOUT, clear_dataset, write_dataset

    # 1. The folder: empty, or --force over a dataset sana made (its files go, so none is left stale), checked with
    #    the flags before anything is deleted.
    _empty_folder(out, force, "dataset")
    if out.is_dir():
        _replaceable_dataset(out)
    if video:
        from sana.nano.moving_shapes import CLIP_FORMATS

        if holdout:
            raise UsageError("--holdout is for images", "the clips' grammar uses every colour-shape pair")
        if fmt not in CLIP_FORMATS:
            raise UsageError(f"unknown --format '{fmt}'", f"use {', '.join(CLIP_FORMATS)} (png: a folder of frames a clip)")
    if out.is_dir():
        clear_dataset(out)  # an image dataset's or a clip dataset's, whichever this one replaces
    if video:
        from .shapes_video import make_clips

        make_clips(out, num, seed, two_objects, fmt, _progress)
        return
    holdout = True if holdout is None else holdout
    # 2. Write, with progress.
    pairs = DEFAULT_HOLDOUT if holdout else ()
    bar, task = _progress("rendering", num)
    with bar:
        write_dataset(out, num, seed, holdout=pairs, two_object_fraction=two_objects,
                      on_progress=lambda done, total: bar.update(task, completed=done))
    held = ", ".join(f"{c} {s}" for c, s in pairs) or "none"
    console.info(f"{num} pairs, seed {seed}, held out: {held}")
    console.out.print(str(out), highlight=False)


@shapes_app.command("check")
def check_command(
    paths: Annotated[List[Path], typer.Argument(help="Images (with --video: clips) to check, or folders of them, such as a `sana shapes make` dataset.")],
    caption: Annotated[Optional[str], typer.Option("--caption", "-c", help="Caption to check against (default: each file's own: its metadata.jsonl row or same-name .txt, as `sana finetune` reads them, else the prompt stored in it).")] = None,
    video: Annotated[bool, typer.Option("--video", help="Check clips (.mp4, .gif, .webp, or a folder of frames) against the moving-shapes grammar.")] = False,
) -> None:
    """Check images (or with --video clips) against their captions with the analytic adherence checker."""
    from rich.markup import escape

    # 1. The caption asked for (a bad one fails before any file is read); folders opened up into their files.
    if video:
        from sana.nano.moving_shapes import parse_motion_caption as parse

        from .shapes_video import check_clip_file as check_file, clip_targets as targets
    else:
        from sana.nano.shapes import parse_caption as parse

        check_file, targets = _check_image_file, _image_targets
    expected = parse(caption) if caption else None
    files = targets(paths)
    own_caption = caption_finder(paths)

    def scene_for(path: Path):
        return expected or parse(own_caption(path))

    # 2. Each file on its own line: one that cannot be checked does not stop the others.
    counts = {"correct": 0, "wrong": 0, "not checked": 0}
    for path, problem in files:
        if problem is None:
            try:
                result = check_file(path, scene_for)
            except SanaError as exc:
                problem = str(exc)
        if problem is not None:
            counts["not checked"] += 1
            console.out.print(f"{escape(str(path))}: [yellow]not checked[/yellow]: {escape(problem)}", highlight=False)
            continue
        wrong = [name for name, ok in result.attributes().items() if not ok]
        counts["wrong" if wrong else "correct"] += 1
        verdict = "[green]correct[/green]" if not wrong else f"[red]wrong[/red]: {', '.join(wrong)}"
        console.out.print(f"{escape(str(path))}: {verdict}", highlight=False)
    noun = "clip(s)" if video else "file(s)"
    console.info(f"{len(files)} {noun}: " + ", ".join(f"{n} {what}" for what, n in counts.items() if n or what != "not checked"))
    if counts["wrong"] or counts["not checked"]:
        raise typer.Exit(1)


def _image_targets(paths: list[Path]) -> list[tuple[Path, str | None]]:
    """(path, why it is not checked, or None) for each file to check: each path given, a folder's files as
    `sana finetune` finds them for an image model (recursively; hidden files and caption sidecars left out; a
    subfolder of images is images, as class folders are, unless captioned as one clip)."""
    from sana.training.video_data import clips_and_images, find_clips

    targets = []
    for path in paths:
        if not path.is_dir():
            targets.append((path, None))
            continue
        clips, images = clips_and_images(path)
        others = find_clips(path)[2]
        found = [(p, CLIP_NOT_IMAGE if p.is_dir() else None) for p in (*clips, *images, *others)]
        targets += sorted(found) or [(path, "nothing to check in this folder")]
    return targets


def _check_image_file(path: Path, scene_for):
    """One image checked against `scene_for(path)`, asked only once the image has been read."""
    from PIL import Image, UnidentifiedImageError

    from sana.nano.adherence import check_image
    from sana.training.video_data import VIDEO_SUFFIXES

    if not path.is_file():
        raise SanaError("not found")
    if path.suffix.lower() in VIDEO_SUFFIXES - {".gif"}:  # a GIF is checked as an image: its first frame
        raise SanaError(CLIP_NOT_IMAGE)
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise SanaError("not an image (it cannot be read)") from None
    with image:
        return check_image(image, scene_for(path))


def caption_finder(paths: list[Path]):
    """own_caption(path): the caption `sana finetune` would train a file (or frames folder) on, by its data readers'
    rules (a metadata.jsonl row, else the same-name .txt), else the prompt stored in the file; SanaError when it
    has none."""
    from sana.outputs import read_metadata
    from sana.training.data import CaptionUnreadable, DataReport, metadata_rows, row_caption, sample_caption
    from sana.training.video_data import caption_file  # the sidecar rule for files and frames folders alike

    # metadata.jsonl files of the folders given (searched down, as fine-tuning searches) and of each path's folder
    roots = {p for p in paths if p.is_dir()} | {p.parent for p in paths if (p.parent / "metadata.jsonl").is_file()}
    rows: dict[Path, dict] = {}
    for root in sorted(roots):
        rows.update(metadata_rows(root, DataReport(root=root)))

    def own_caption(path: Path) -> str:
        try:
            text = sample_caption(None, row_caption(rows.get(path.resolve(), {})), caption_file(path), None)
        except CaptionUnreadable as exc:
            raise SanaError(f"{exc} (save it as UTF-8, or pass --caption)") from None
        if text is None:
            try:
                text = read_metadata(path).prompt
            except SanaError:
                text = None
        if not text:
            raise SanaError("no stored prompt or caption file (pass --caption)")
        return text

    return own_caption


@shapes_app.command("score")
def score_command(
    model: opt.Model = None,
    transformer: opt.Transformer = None,
    num: Annotated[int, typer.Option("--num", "-n", min=2, help="Prompts of seen pairs (half one-object, half two-object).")] = 200,
    num_heldout: Annotated[Optional[int], typer.Option("--num-heldout", min=0, help="Prompts using a held-out pair (default num / 2).")] = None,
    seed: Annotated[int, typer.Option("--seed", "-s", help="Seed of the prompt sample and the first image.")] = 0,
    steps: opt.Steps = None,
    cfg: Annotated[Optional[float], typer.Option("--cfg", help="Guidance scale (model default if not given).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Save a grid of sample images (green frame: fully correct).")] = None,
    grid: Annotated[int, typer.Option("--grid", min=1, help="Images in the grid, taken evenly across the sets.")] = 32,
    rows: Annotated[Optional[Path], typer.Option("--rows", help="Write every prompt's result as JSON lines here.")] = None,
    device: opt.Device = "auto",
    dtype: opt.Dtype = "auto",
    force: opt.Force = False,
    video: Annotated[bool, typer.Option("--video", help="Score a video model on clips of the moving-shapes grammar (--num clips, half one-object, half two-object; --out a .gif / .mp4 grid).")] = False,
    best_of: opt.BestOf = None,
    reward: opt.Reward = None,
) -> None:
    """Score a model's prompt adherence on prompts sampled from the grammar with a fixed seed."""
    from sana.nano.adherence import SETS, sample_grid, score_model

    from .generation import quiet_libraries

    # 1. Outputs first: an existing file fails before the model loads.
    if not model:
        raise UsageError("no --model given", "pass --model nano or a model directory")
    if video:
        if num_heldout is not None:
            raise UsageError("--num-heldout is for images", "the clips' grammar holds no pairs out")
        if best_of is not None or reward:
            raise UsageError("--best-of is for images", "score clips without it")
        from .shapes_video import score_clips

        score_clips(model, transformer, num, seed, steps, cfg, out, grid, rows, device, dtype, force, _progress)
        return
    check_outputs(out, rows, force, (".png", ".jpg", ".jpeg", ".webp"), "image", "use a .png, .jpg or .webp name")
    from .best_of import check_flags, reward_terms

    check_flags({"best_of": best_of, "reward": reward})
    terms = reward_terms({"best_of": best_of, "reward": reward or "shapes"}, None, model)
    if terms is not None and [t.name for t in terms] == ["shapes"]:
        console.notice("--best-of ranks by the checker that scores: the table is what the best of each prompt's "
                       "candidates reaches, an upper bound for any other reward")

    # 2. Load the model the way `sana gen` does, with its defaults.
    quiet_libraries()
    pipe, request_for = _load_generator(model, transformer, steps, cfg, device, dtype)

    # 3. Generate and check, one prompt and seed at a time; keep a sample for the grid.
    total = num + (num // 2 if num_heldout is None else num_heldout)
    keep_every = max(1, total // grid)
    samples: list = []
    report_so_far: list = []
    bar, task = _progress("scoring", total)

    def generate(prompts: list[str], seeds: list[int]) -> list:
        if terms is not None:  # each prompt's image the best of its candidates (`sana gen --best-of`)
            return [choose_best(pipe, request_for(p, s), candidate_seeds([s], best_of)[0], rewards, pipe.generate).image
                    for p, s in zip(prompts, seeds)]
        return [pipe.generate(request_for(p, s)).images[0] for p, s in zip(prompts, seeds)]

    rewards = None
    if terms is not None:
        from sana.rewards.plugins import RewardSet

        from .best_of import candidate_seeds, choose_best

        rewards = RewardSet(terms, pipe.device)

    def seen(entry, image) -> None:
        index = len(report_so_far)
        report_so_far.append(entry)
        bar.update(task, completed=index + 1)
        if index % keep_every == 0 and len(samples) < grid:
            samples.append((image, entry.result.fully_correct))

    try:
        with bar:
            report = score_model(generate, num, seed, num_heldout=num_heldout, batch_size=1, on_result=seen)
    finally:
        if rewards is not None:
            rewards.close()

    # 4. The table, then the optional grid and rows.
    title = f"prompt adherence, {model}" + (f", best of {best_of} by {reward or 'shapes'}" if terms else "")
    print_scores(report, title, SETS,
                 ("color", "shape", "position", "size", "background", "no_extras"), "prompts")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        sample_grid([image for image, _ in samples], [ok for _, ok in samples]).save(out)
        console.info(f"grid of {len(samples)} samples: {out}")
    if rows is not None:
        write_score_rows(rows, report)


def _load_generator(model: str, transformer: str | None, steps: int | None, cfg: float | None, device_name: str,
                    dtype_name: str):
    """(pipeline, request_for(prompt, seed)) for a model argument, with the model's own sampling defaults."""
    from sana.components import check_components, family_from_index, model_index
    from sana.device import pick_device, pick_dtype
    from sana.hub import resolve_model
    from sana.pipelines.image import ImagePipeline, ImageRequest

    from .image_settings import model_defaults

    resolved = resolve_model(model)
    family = (resolved.spec.family if resolved.spec else None) or family_from_index(model_index(resolved.path)) or "sana"
    if family not in ("sana", "sana1.5", "sprint"):
        raise UsageError(f"{model} is a {family} model", "scoring needs an image model")
    check_components(resolved.path)
    if transformer and not Path(transformer).expanduser().exists():
        raise UsageError(f"--transformer {transformer} does not exist")
    device = pick_device(device_name)
    dtype = pick_dtype(dtype_name, device)
    console.info(f"loading {model} on {device}")
    pipe = ImagePipeline.from_pretrained(resolved.path, dtype=dtype, device=device, family=family,
                                         transformer_path=transformer)
    defaults = model_defaults(resolved.spec, pipe.scheduler_config, family, pipe.native_resolution, resolved.path)
    side = pipe.native_resolution

    def request_for(prompt: str, seed: int):
        return ImageRequest(prompt=prompt, seeds=[seed], width=side, height=side, steps=steps or defaults.steps,
                            guidance=defaults.cfg if cfg is None else cfg, sampler=defaults.sampler,
                            flow_shift=defaults.shift, max_timesteps=defaults.max_timesteps,
                            intermediate_timesteps=defaults.intermediate_timesteps)

    return pipe, request_for


@shapes_app.command("train-vae")
def train_vae_command(
    out: Annotated[Path, typer.Argument(help="Folder for vae/ (diffusers format) and vae-train.json (settings, metrics, loss curve).")],
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps.")] = 20_000,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images a step, drawn fresh from the grammar.")] = 32,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (AdamW, warm-up then cosine).")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", "-s", help="Seed of the weights and the data stream.")] = 0,
    holdout: Holdout = True,
    max_minutes: Annotated[Optional[float], typer.Option("--max-minutes", help="Stop early after this long (with --video the learning rate's decay follows this budget too).")] = None,
    eval_images: Annotated[int, typer.Option("--eval-images", min=1, help="Images for the latent scale and the final scores.")] = 128,
    device: opt.Device = "auto",
    force: opt.Force = False,
    bf16: Annotated[bool, typer.Option("--bf16/--fp32", help="On a CUDA GPU, the forward under bf16 autocast or in fp32 (a CPU always uses fp32).")] = True,
    video: Annotated[bool, typer.Option("--video", help="The nano video model's autoencoder (diffusers AutoencoderKLWan, 16 x 5 x 16 x 16 latents for 17 frames of 128 px) on the moving-shapes grammar: --batch and --eval-images count clips.")] = False,
    start_from: Annotated[Optional[Path], typer.Option("--start-from", help="Go on from an earlier autoencoder (its training folder, or the vae/ in it) with a new optimizer and schedule; give another --seed for data it has not seen.")] = None,
    crop_frames: Annotated[Optional[int], typer.Option("--crop-frames", help="--video: train on random runs of this many frames (1 + 4k) of each clip; scores use whole clips.")] = None,
    crop_side: Annotated[Optional[int], typer.Option("--crop-side", help="--video: train on random square windows of this many pixels (a multiple of 8); scores use whole clips.")] = None,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph/--no-cuda-graph", help="On a CUDA GPU, capture the training step once and replay it (these small autoencoders are launch-bound).")] = True,
) -> None:
    """Train the nano model's autoencoder (diffusers AutoencoderDC, 8 x 16 x 16 latents) on the grammar."""
    from sana.nano.autoencoder import VaeTrainConfig, save_vae, train_vae
    from sana.nano.shapes import DEFAULT_HOLDOUT

    # 1. Settings, the autoencoder to start from and the output folder.
    if (crop_frames is not None or crop_side is not None) and not video:
        raise UsageError("--crop-frames and --crop-side are for --video", "images train whole")
    if video:
        from sana.nano.moving_shapes import check_crop

        try:
            check_crop(crop_frames, crop_side)
        except ValueError as error:
            raise UsageError(f"--crop-frames / --crop-side: {error}") from None
    start = _start_autoencoder(start_from, "AutoencoderKLWan" if video else "AutoencoderDC") if start_from else None
    _empty_folder(out, force, "autoencoder")
    if video:
        from .shapes_video import train_video_vae

        train_video_vae(out, steps, batch, lr, seed, max_minutes, eval_images, device, bf16, start,
                        crop=(crop_frames, crop_side), cuda_graph=cuda_graph)
        return
    cfg = VaeTrainConfig(steps=steps, batch=batch, lr=lr, seed=seed, holdout=DEFAULT_HOLDOUT if holdout else (),
                         eval_images=eval_images, max_seconds=None if max_minutes is None else 60 * max_minutes,
                         bf16=bf16, cuda_graph=cuda_graph)
    cfg.log_every = max(1, min(200, steps // 20))
    # 2. Train, logging the loss every few hundred steps; save.
    path, report = train_and_save_autoencoder(out, "nano autoencoder", train_vae, save_vae, cfg, device, start,
                                              "AutoencoderDC")
    console.info(f"{report.steps_done} steps in {report.seconds:.0f}s; reconstruction {report.psnr:.1f} dB PSNR, "
                 f"{report.adherence:.1f}% fully correct; scaling_factor {report.scaling_factor:.5f}")
    console.out.print(str(path), highlight=False)


@shapes_app.command("build")
def build_command(
    out: Annotated[Path, typer.Argument(help="New folder for the nano model (diffusers format).")],
    vae: Annotated[Path, typer.Option("--vae", help="Trained autoencoder folder (from `sana shapes train-vae`).")],
    transformer: Annotated[Optional[Path], typer.Option("--transformer", help="DiT weights (a folder or file; random when not given).")] = None,
    text_from: Annotated[Optional[Path], typer.Option("--text-from", help="Copy the tokenizer and text encoder from this nano model (the one the DiT was trained with).")] = None,
    seed: Annotated[int, typer.Option("--seed", "-s", help="Seed of the random text encoder (and DiT, when random).")] = 0,
    shift: Annotated[float, typer.Option("--shift", help="Flow shift written into the scheduler config.")] = 3.0,
    dtype: Annotated[str, typer.Option("--dtype", help="Weights on disk: fp16, bf16 or fp32.")] = "fp16",
    video: Annotated[bool, typer.Option("--video", help="The nano video model (SanaVideoPipeline): --vae from `train-vae --video`, the text encoder and tokenizer from --text-from (default: the built-in nano model).")] = False,
) -> None:
    """Write the nano SANA model: tokenizer, Gemma-2 text encoder, autoencoder, DiT and scheduler."""
    from sana.device import DTYPES
    from sana.nano.build import SIZE_BUDGET, write_nano_model

    from .generation import quiet_libraries

    # 1. Check the arguments before anything is built.
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{dtype}'", "use fp16, bf16 or fp32")
    _empty_folder(out, False, "model")
    for path, flag in ((vae, "--vae"), (transformer, "--transformer"), (text_from, "--text-from")):
        if path is not None and not path.exists():
            raise UsageError(f"{flag} {path} does not exist")
    # 2. Build and save; the size budget applies to the shipped precisions only.
    quiet_libraries()
    budget = SIZE_BUDGET
    if video:
        from .shapes_video import build_video

        build, budget = build_video(out, vae, transformer, text_from, seed, shift, dtype)
    else:
        build = write_nano_model(out, vae, transformer=transformer, text_from=text_from, seed=seed, flow_shift=shift,
                                 dtype=DTYPES[dtype], check_budget=dtype != "fp32")
    # 3. Sizes per component.
    table = Table(title=f"nano {'video ' if video else ''}model, {dtype}", header_style="bold")
    for column in ("component", "parameters", "MB on disk"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for name, size in build.sizes.items():
        params = build.params.get(name)
        table.add_row(name, f"{params / 1e6:.2f} M" if params else "-", f"{size / 1e6:.2f}")
    table.add_row("total", f"{sum(build.params.values()) / 1e6:.2f} M",
                  f"{build.total_bytes / 1e6:.2f} (budget {budget / 1e6:.0f})")
    console.table(table)
    console.out.print(str(out), highlight=False)
