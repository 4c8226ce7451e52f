"""What the generating commands share: sizes, settings layering (--from, flags, a prompts file), jobs with their
seeds and outputs planned before anything loads, model resolution with the family check, the memory-plan table
(progress and writing: `run_output`). The runs themselves are the commands' own numbered steps (sana_cli/gen.py, sana_cli/video.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable

from sana.errors import OutputExists, SanaError, UsageError

from . import console

# Named sizes users know; SANA's "4K" is 4096 x 4096.
NAMED_SIZES = {"512": (512, 512), "1k": (1024, 1024), "2k": (2048, 2048), "4k": (4096, 4096),
               "720p": (1280, 720), "1080p": (1920, 1080), "1440p": (2560, 1440), "2160p": (3840, 2160)}
# Clips: the names mean the sizes the video models were trained at (sides multiples of 32, 720p's 720 is not).
CLIP_NAMED_SIZES = {"480p": (832, 480), "720p": (1280, 704)}
SIZE_MULTIPLE = 32
# Names checked before torch is imported (sana.sampling.SAMPLERS and sana.device.DTYPES hold the same; a test
# keeps them equal).
IMAGE_SAMPLERS = ("flow-dpm", "flow-euler", "scm")
DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")


def parse_resolution(text: str | int | None, named: dict[str, tuple[int, int]] = NAMED_SIZES,
                     ) -> tuple[int, int] | None:
    """`1024` -> (1024, 1024); `1536x1024` -> (1536, 1024) as WxH; `4K` -> (4096, 4096) (names from `named`)."""
    if text is None:
        return None
    value = str(text).strip().lower()
    if value in named:
        return named[value]
    match = re.fullmatch(r"(\d+)(?:\s*[x*×]\s*(\d+))?", value)
    if not match:
        names = ", ".join(named)
        raise UsageError(f"cannot read the size '{text}'", f"use WxH (e.g. 1536x1024), a side (1024) or {names}")
    width = int(match.group(1))
    height = int(match.group(2) or width)
    if not (SIZE_MULTIPLE <= width <= 16384 and SIZE_MULTIPLE <= height <= 16384):
        raise UsageError(f"size {width}x{height} is out of range", f"sides go from {SIZE_MULTIPLE} to 16384 px")
    return width, height


def random_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


def record_settings(record) -> dict[str, Any]:
    """Settings to replay from a stored GenerationRecord (an image's or a clip's)."""
    settings = {
        "prompt": record.prompt, "negative": record.negative_prompt, "seed": record.seed, "steps": record.steps,
        "cfg": record.guidance, "pag": record.pag, "sampler": record.sampler, "shift": record.flow_shift,
        "res": f"{record.width}x{record.height}" if record.width and record.height else None, "model": record.model,
        "frames": record.frames, "fps": record.fps,
    }
    if record.pag_layers:
        settings["pag_layer"] = record.pag_layers[0]
    for key in ("max_timesteps", "intermediate_timesteps"):  # Sprint's TrigFlow timesteps
        if record.extra.get(key) is not None:
            settings[key] = record.extra[key]
    if record.extra.get("transformer"):
        settings["transformer"] = record.extra["transformer"]
    if record.loras:
        settings["lora"] = [f"{entry['path']}:{entry.get('scale', 1.0)}" for entry in record.loras]
    if "motion_score" in record.extra:  # None (nothing appended) is kept as "none": None means "not set" here
        score = record.extra["motion_score"]
        settings["motion_score"] = "none" if score is None else str(score)
    if record.extra.get("crf") is not None:  # an MP4's quality, so a replay encodes alike
        settings["crf"] = record.extra["crf"]
    if record.extra.get("image"):  # image to video: the first frame, and its hash to check it against
        settings["image"] = record.extra["image"]
        settings["image_sha256"] = record.extra.get("image_sha256")
    return {k: v for k, v in settings.items() if v is not None}


# The model families each command generates with, and how a message names a family.
COMMAND_FAMILIES = {"gen": ("sana", "sana1.5"), "sprint": ("sprint",), "video": ("video",), "world": ("wm",)}
FAMILY_NAMES = {"sana": "a SANA image model", "sana1.5": "a SANA image model", "sprint": "a SANA-Sprint model",
                "video": "a SANA-Video model", "wm": "a SANA-WM world model"}
# What a record of another command's family still gives to --from.
PORTABLE_KEYS = ("prompt", "negative", "seed")


def replay_settings(path: str | Path | None, command: str) -> dict[str, Any]:
    """`--from FILE`: the settings stored in an image's or clip's metadata ({} without a file). A record made
    by another command's models (an image replayed as a clip, ...) gives its prompt, negative prompt and seed."""
    if not path:
        return {}
    from sana.outputs import read_metadata

    record = read_metadata(Path(path))
    if record.extra.get("replay"):  # a fine-tuning run's validation sample: what its replay can and cannot give
        console.notice(str(record.extra["replay"]))
    settings = record_settings(record)
    if record.family and record.family not in COMMAND_FAMILIES[command]:
        settings = {k: v for k, v in settings.items() if k in PORTABLE_KEYS}
        maker = next((c for c, families in COMMAND_FAMILIES.items() if record.family in families), None)
        console.notice(f"{Path(path).name} was made by {f'sana {maker}' if maker else 'another command'} with "
                       f"{record.model or FAMILY_NAMES.get(record.family, record.family)}: only its prompt, negative "
                       f"prompt and seed carry over to sana {command}")
    return settings


def check_family(model_arg: str, family: str, command: str) -> None:
    """A one-line error when `command` does not generate with `family`'s models, naming the command that does."""
    if family in COMMAND_FAMILIES[command]:
        return
    owner = next((c for c, families in COMMAND_FAMILIES.items() if family in families), None)
    hint = f"use `sana {owner}` for it" if owner else "see `sana models list`"
    if PREFERRED.get(command):
        hint += f", or pass --model {PREFERRED[command][0]}"
    raise UsageError(f"{model_arg} is {FAMILY_NAMES.get(family, f'a {family} model')}", hint)


def check_not_reward(model_arg: str, command: str) -> None:
    """A reward model's name (`sana models list` shows them beside the generating models) given as --model: a
    one-line error saying what it is, not "unknown model"."""
    from sana.rewards.models import find_reward_model

    if find_reward_model(model_arg) is None:
        return
    hint = "reward models score outputs for `sana gen --best-of` and `sana finetune --rl`"
    if PREFERRED.get(command):
        hint += f"; pass --model {PREFERRED[command][0]}"
    raise UsageError(f"{model_arg} is a reward model, not {FAMILY_NAMES[COMMAND_FAMILIES[command][0]]}", hint)


def read_jobs(flags: dict[str, Any], replay: dict[str, Any], command: str, noun: str = "IMAGE",
              check_line: Callable[[dict[str, Any]], Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(prompt, per-prompt overrides) from the prompt argument, --prompts FILE or --from's record. A prompt of
    spaces alone is no prompt, as an empty one is (a prompts file skips such lines). `check_line(overrides)`, the
    command's checks of a job's values, runs on each line of a prompts file, so its errors name the file and line."""
    from sana.prompts_file import read_prompts

    typed = flags.get("prompt") if (flags.get("prompt") or "").strip() else None
    if flags.get("prompts"):
        if typed:
            raise UsageError("give a prompt or --prompts FILE, not both")
        return [(job.prompt, dict(job.overrides))
                for job in read_prompts(Path(flags["prompts"]), check_size=_size_check(command), check_line=check_line)]
    prompt = typed or replay.get("prompt")
    if not (prompt or "").strip():
        raise UsageError("no prompt given", f"give a prompt: sana {command} \"a prompt\", or --prompts FILE, or --from {noun}")
    return [(prompt, {})]


def _size_check(command: str):
    """How `command` reads a size (a prompts-file line's "res" is checked with it, so its error names the line)."""
    if command == "video":
        from .clip_settings import check_clip_size

        return check_clip_size
    return parse_resolution


def plan_jobs(jobs: list[tuple[str, dict[str, Any]]], replay: dict[str, Any], explicit: dict[str, Any], *,
              dry_run: bool, check, plan_paths, noun: str = "images", skip_existing: bool = False,
              model: str | None = None, sizes_asked=None) -> list[tuple[str, dict, list[int], list[Path]]]:
    """Settings, seeds and output paths of every job, before anything loads (an existing file fails now, not after
    a long load). `check(settings)` rejects bad values; `plan_paths(out, prompt, seeds, index_start, taken)` names
    the outputs, default names unique against `taken` (the paths earlier jobs got). Layers: a prompts-file line's
    overrides beat the flags, which beat --from's record. `-o NAME` without a suffix is a directory when the run
    writes several outputs. `skip_existing` (with `plan_paths` naming as under --force) drops the outputs already
    on disk, and the jobs left with none: a run that stopped part-way continues where it stopped. An output counts
    as made only when its record holds the job's prompt and seed (and `model`, the run's --model, when both name
    one) and the settings the job asks for (`sizes_asked(res)`: the (width, height) a size is recorded as, where
    the command can tell before loading); a file holding anything else is an error naming it."""
    from sana.outputs import made_already

    merged = []
    for prompt, overrides in jobs:
        settings = merge_settings(replay, explicit, overrides)
        check(settings)
        merged.append((prompt, overrides, settings, check_num(settings.get("num"))))
    several = sum(num for *_, num in merged) > 1
    planned_jobs, planned, taken, skipped = [], 0, set(), 0
    for prompt, overrides, settings, num in merged:
        seed = check_seed(settings.get("seed"))
        if seed is None and skip_existing and not dry_run:  # continue with the seeds the stopped run drew
            seed = _earlier_run_seed(prompt, lambda seeds: plan_paths(settings.get("out"), prompt, seeds, 0, set()))
        if seed is None:
            seed = random_seed()
            if settings.get("seed") == -1:
                console.info(f"seed -1: drew {seed}")
        seeds = [(seed + i) & MAX_SEED for i in range(num)]
        out = settings.get("out")
        if several and out and _bare_name(out):
            settings["out"] = out = out + "/"
        if "out" in overrides:  # a prompts-file line's own output: used as given (numbered only for --num)
            index_start = 0
        else:  # a shared `-o file.png` numbers the outputs of every prompt on
            index_start = planned if len(jobs) > 1 or num > 1 else 0
            planned += num
        if dry_run:  # nothing planned, but what the real run would refuse is said
            try:
                plan_paths(out, prompt, seeds, index_start, set(taken))
            except OutputExists as exc:
                console.notice(f"{exc.message.split(';')[0]}: the run would refuse it without --force")
        paths = [] if dry_run else plan_paths(out, prompt, seeds, index_start, taken)
        for path in paths:
            if path in taken:
                raise UsageError(f"two {noun} of this run would be written to {path}", "give each line its own out")
            taken.add(path)
        if skip_existing and not dry_run:
            asked = settings_asked(settings, sizes_asked)
            kept = [(s, p) for s, p in zip(seeds, paths)
                    if not made_already(p, prompt=prompt, seed=s, model=model, asked=asked)]
            skipped += len(seeds) - len(kept)
            if not kept:
                continue
            seeds, paths = [s for s, _ in kept], [p for _, p in kept]
        planned_jobs.append((prompt, settings, seeds, paths))
    if skipped:
        console.info(f"--skip-existing: {skipped} of the run's {noun} exist already; making the other "
                     f"{sum(len(seeds) for _, _, seeds, _ in planned_jobs)}")
    return planned_jobs


def settings_asked(settings: dict[str, Any], sizes_asked=None) -> dict[str, Any]:
    """The record fields a job's given settings (flags, a prompts-file line, --from) fix: what an output already
    on disk must hold to count as this job's (`--skip-existing`). Settings left to the model's defaults are not
    known before it loads, and are not compared."""
    from sana.lora import parse_lora_arg

    # fps is not among them: a GIF records the rate it can play, which may be below the one asked for
    fields = {"steps": "steps", "cfg": "guidance", "sampler": "sampler", "shift": "flow_shift", "pag": "pag",
              "negative": "negative_prompt"}
    asked = {field: settings[key] for key, field in fields.items() if settings.get(key) is not None}
    if "lora" in settings:
        asked["loras"] = [parse_lora_arg(text) for text in settings.get("lora") or []]
    if sizes_asked is not None and settings.get("res"):
        asked["size"] = sizes_asked(settings["res"])
    return asked


def _earlier_run_seed(prompt: str, paths_for) -> int | None:
    """--skip-existing for a prompt without a seed: the first seed an earlier run of it drew, read from the outputs
    in the folder it names them in (names hold the seed, so a new random seed would make every output again); None
    when the outputs are not named by seed or none of that prompt is there."""
    first, second = paths_for([0])[0], paths_for([1])[0]
    if first == second or not first.parent.is_dir():  # a file -o: its name does not depend on the seed
        return None
    from sana.outputs import read_metadata

    seeds = []
    for entry in first.parent.iterdir():
        try:
            record = read_metadata(entry)
        except (SanaError, OSError, ValueError):
            continue
        if record.prompt == prompt and record.seed is not None and paths_for([record.seed])[0] == entry:
            seeds.append(int(record.seed))
    if seeds:
        console.info(f"--skip-existing: {prompt[:60]!r} continues from seed {min(seeds)}, as the earlier run drew")
    return min(seeds) if seeds else None


MAX_SEED = 0xFFFFFFFF  # seeds are 32-bit; --num N counts on from the seed and wraps


def check_seed(value: Any) -> int | None:
    """A seed in [0, 2**32 - 1]; None (not given) or -1 (A1111's "random") -> None: the caller draws one."""
    if value is None or int(value) == -1:
        return None
    if not 0 <= int(value) <= MAX_SEED:
        raise UsageError(f"seed {value} is out of range", f"use 0 to {MAX_SEED}, or -1 for a random one")
    return int(value)


def check_num(value: Any) -> int:
    num = int(value or 1)
    if num < 1:
        raise UsageError(f"--num {value} must be at least 1")
    return num


def _bare_name(out: str) -> bool:
    """`-o out`: no suffix, no trailing slash and not an existing file."""
    path = Path(out).expanduser()
    return not out.endswith(("/", os.sep)) and not path.suffix and not path.is_file()


def resolve_for(command: str, model_arg: str, *, dry_run: bool):
    """(ResolvedModel or None, preset or None, family) for a model argument; one-line errors for unknown models,
    another command's models and missing components. No download; a dry run may plan from the preset alone."""
    from sana.components import check_components, family_from_index, model_index
    from sana.registry import find_spec

    known = None if Path(model_arg).expanduser().exists() else find_spec(model_arg)
    if known is not None:  # another command's model is refused before its download state matters
        check_family(model_arg, known.family, command)
    elif not Path(model_arg).expanduser().exists():
        check_not_reward(model_arg, command)
    resolved, spec = _resolve(model_arg, registry_only_ok=dry_run)
    family = (spec.family if spec else None) or family_from_index(model_index(resolved.path)) or "sana"
    check_family(model_arg, family, command)
    if resolved is not None:
        check_components(resolved.path)
    return resolved, spec, family


def weights_variant(spec, plan) -> str | None:
    """Variant files of the compute precision when the model has them (e.g. *.bf16.safetensors), else the default."""
    if spec is None:
        return plan.dtype
    weight_set = spec.weights.get(plan.dtype)
    return weight_set.variant if weight_set else None


def merge_settings(*layers: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({k: v for k, v in layer.items() if v is not None})
    return merged


def quiet_libraries() -> None:
    """diffusers and transformers print progress bars and warnings of their own; ours are enough.

    Neither is imported here (each costs seconds, and `sana gen` may need neither): one already imported is told
    now; one imported later reads its verbosity from the environment. Its progress bars stay on then, which only
    transformers' fallback loaders (a tokenizer without tokenizer.json, weights without safetensors) and diffusers'
    sharded checkpoints show."""
    import importlib
    import sys

    for name, env in (("diffusers", "DIFFUSERS_VERBOSITY"), ("transformers", "TRANSFORMERS_VERBOSITY")):
        if not console.settings.verbose:
            os.environ.setdefault(env, "error")
        if name in sys.modules:
            lib = importlib.import_module(f"{name}.utils.logging")
            lib.disable_progress_bar()
            if not console.settings.verbose:
                lib.set_verbosity_error()


def _resolve(model_arg: str, *, registry_only_ok: bool):
    """(ResolvedModel or None, preset or None). With `registry_only_ok`, a registry model that is not downloaded
    resolves to its preset alone (a dry run plans from the preset's sizes)."""
    from sana.errors import ModelNotFound
    from sana.hub import resolve_model
    from sana.registry import find_spec

    try:
        resolved = resolve_model(model_arg)
    except ModelNotFound:
        spec = find_spec(model_arg) if registry_only_ok else None
        if spec is None or spec.extra.get("embedded"):  # a preset alone plans only the real models' components
            raise
        return None, spec
    return resolved, resolved.spec


def component_sizes(resolved, spec, transformer_path: str | None):
    """Sizes for the planner: safetensors headers and configs when the model is on disk, else the preset."""
    from sana.memory import sizes_from_directory, sizes_from_spec

    if resolved is None:
        return sizes_from_spec(spec)
    return sizes_from_directory(resolved.path, transformer_config=transformer_config_for(resolved, spec, transformer_path))


def transformer_config_for(resolved, spec, transformer_path: str | None) -> dict:
    """The DiT config the run uses: a fine-tune folder's own, else the model folder's, else the preset's."""
    from sana.hub import transformer_config

    if transformer_path and Path(transformer_path).expanduser().is_dir():
        config = transformer_config(Path(transformer_path).expanduser())
        if config:
            return config
    if resolved is not None:
        return transformer_config(resolved.path) or (spec.transformer if spec else {})
    return spec.transformer


def plan_table(plan, model: str):
    """The memory plan as a table: one row a component, then the peak against what the device offers."""
    from rich.table import Table
    from rich.text import Text

    work = plan.work
    frames = f"{work.frames} frame{'s' if work.frames != 1 else ''}"
    outputs = f"{work.images} clip(s) of {frames}" if plan.sizes.is_clip else f"{work.images} image(s)"
    table = Table(title=Text(f"memory plan: {model} at {work.width}x{work.height}, {outputs}, DiT batch {work.rows}"),
                  title_justify="left", header_style="bold",
                  caption=_plan_caption(plan), caption_justify="left")
    for column in ("component", "dtype", "where", "predicted peak"):
        table.add_column(column, justify="right" if column == "predicted peak" else "left", overflow="fold")
    for row in plan.rows():
        table.add_row(row.component, row.dtype, Text(row.where), "-" if row.peak is None else _gib(row.peak))
    room = "usable RAM" if not plan.device.is_accelerator else "usable" + (f" under the {_gib(plan.cap)} cap" if plan.cap else "")
    table.add_row(Text("peak", style="bold"), "", f"{_gib(plan.budget)} {room}", Text(_gib(plan.peak_bytes), style="bold"))
    return table


def _plan_caption(plan) -> str:
    lines = [plan.device.describe(), plan.headline(), *plan.notes()]
    return "\n".join(lines)


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / 2**30:.1f} GiB"


# Preferred models when --model is not given, best first; the first one downloaded is used.
PREFERRED = {"gen": ("sana1.5-1.6b", "sana-1.6b-bf16", "sana-1.6b", "sana1.5-4.8b", "sana-0.6b", "sana-1.6b-2k",
                     "sana-1.6b-4k", "sana-1.6b-512", "sana-0.6b-512"),
             "sprint": ("sprint-1.6b", "sprint-0.6b"),
             "video": ("video-2b-480p", "video-2b-720p"),
             "world": ("wm-2.6b",)}


def default_model(command: str, *, planning: bool = False) -> str:
    """The best downloaded model for the command, with a notice (once a process: a command may ask several times);
    an error naming what to pull when none is. `planning` (a dry run or a preview, which read no weights): the best
    registry model when none is downloaded."""
    from sana.hub import list_models

    ready = {entry.name for entry in list_models() if entry.status == "yes"}
    for name in PREFERRED[command]:
        if name in ready:
            _notice_once(f"using {name}, the best model downloaded here (--model chooses another)")
            return name
    if command == "gen" and "nano" in ready:
        _notice_once(f"no SANA model is downloaded: using the built-in nano model (256 px coloured shapes); "
                     f"`sana models pull {PREFERRED[command][0]}` gets the real one")
        return "nano"
    if command == "video" and "nano-video" in ready:
        _notice_once(f"no SANA-Video model is downloaded: using the built-in nano video model (128 px clips of "
                     f"moving coloured shapes); `sana models pull {PREFERRED[command][0]}` gets the real one")
        return "nano-video"
    if planning:
        return PREFERRED[command][0]
    raise UsageError("no --model given and no model is downloaded",
                     f"run: sana models pull {PREFERRED[command][0]} (or pass --model DIR)")


_SAID: set[str] = set()  # the notices of `default_model` printed so far in this process


def _notice_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        console.notice(message)


def plan_json(plan) -> dict:
    """A memory plan as --dry-run --json reports it: its record, whether it fits and its bytes."""
    return {**plan.record(), "fits": plan.fits, "peak_bytes": plan.peak_bytes, "budget_bytes": plan.budget}
