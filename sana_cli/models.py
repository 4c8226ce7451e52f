"""`sana models`: list, inspect, download and remove models (sizes in GB = 10^9 bytes, as the hub shows them)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from sana.errors import UsageError
from sana.registry import ModelSpec

from . import console

models_app = typer.Typer(help="List, inspect, download and remove models.", no_args_is_help=True)

NAME_HELP = "Registry name or alias, hub org/name id, or a local diffusers-format directory."
PRECISIONS = ("fp32", "fp16", "bf16")


def _check_precision(precision: str | None) -> None:
    if precision is not None and precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}'", f"use one of {', '.join(PRECISIONS)}")


def _key_value_table(rows: list[tuple[str, str]]) -> Table:
    table = Table(show_header=False, show_edge=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, value)
    return table


def _print_json(title: str, data: Any) -> None:
    console.out.print(f"\n[bold]{title}[/bold]")
    console.out.print_json(json.dumps(data))


@models_app.command("list")
def list_command() -> None:
    """The registry, and which models are in the hub cache."""
    from sana.hub import human_count, human_size, list_models

    table = Table(header_style="bold")
    for column, justify in (("name", "left"), ("family", "left"), ("resolution", "right"), ("params", "right"),
                            ("downloaded", "left"), ("on disk", "right")):
        table.add_column(column, justify=justify, no_wrap=True)
    for entry in list_models():
        spec = entry.spec
        table.add_row(entry.name, entry.family or "-", f"{spec.resolution} px" if spec else "-",
                      human_count(spec.transformer_params) if spec else "-", entry.status,
                      human_size(entry.size_on_disk) if entry.status != "no" else "-")
    from sana.rewards.models import REWARD_MODELS, reward_model_status

    for reward in REWARD_MODELS.values():  # the reward models of `sana finetune --rl`
        status, size = reward_model_status(reward)
        table.add_row(reward.name, "reward", "-", "-", status, human_size(size) if status != "no" else "-")
    console.table(table)


@models_app.command("info")
def info_command(name: Annotated[str, typer.Argument(help=NAME_HELP)]) -> None:
    """Everything known about a model, without network: preset, sizes per precision, transformer config."""
    from sana import hub
    from sana.registry import find_spec

    from sana.rewards.models import find_reward_model

    # 1. A local directory, or a cached repo the registry does not know: what is on disk, complete or not.
    local = Path(name).expanduser()
    reward = None if local.exists() else find_reward_model(name)
    if reward is not None:
        _print_reward_model(reward)
        return
    if local.exists():
        _print_directory(hub.require_model_directory(local, name), name)
        return
    spec = find_spec(name)
    if spec is None:
        cached = hub.cached_snapshot(name)
        _print_directory(cached[0] if cached else hub.resolve_model(name).path, name)  # resolving says why not
        return

    # 2. A registry model: the preset, then its cache state.
    cached = hub.cached_repos().get(spec.repo.lower())
    rows = [("name", spec.name), ("aliases", ", ".join(spec.aliases) or "-"), ("repo", spec.repo),
            ("family", spec.family), ("description", spec.description), ("resolution", f"{spec.resolution} px"),
            ("pipeline", spec.pipeline)]
    if not spec.verified:
        rows.append(("verified", "no (values from the model's documentation, not checked against the repo)"))
    if spec.extra.get("embedded"):
        from sana.embedded import embedded_env, embedded_model_dir

        path = embedded_model_dir(spec.extra["embedded"])
        rows.append(("installed", f"yes, in the package: {path}" if path else
                     f"no (this installation lacks it; {embedded_env(spec.extra['embedded'])} can point at a "
                     f"{spec.name} model folder)"))
    elif cached is None:
        rows.append(("downloaded", f"no (sana models pull {spec.name})"))
    else:
        missing = hub.missing_files(cached.snapshot) if cached.snapshot else ["every file"]
        status = "partial" if missing else "yes"
        rows += [("downloaded", f"{status}, {hub.human_size(cached.size_on_disk)} on disk"),
                 ("path", str(cached.snapshot or cached.path))]
        if missing:
            rows.append(("missing files", f"{', '.join(missing)} (sana models pull {spec.name})"))
    console.table(_key_value_table(rows))

    params = Table(title="parameters", header_style="bold", title_justify="left")
    params.add_column("component")
    params.add_column("params", justify="right")
    for component, count in spec.params.items():
        params.add_row(component, f"{hub.human_count(count)} ({count:,})")
    console.out.print(params)
    console.out.print(_download_sizes(spec))
    _print_json("defaults", spec.defaults)
    _print_json("transformer config", spec.transformer)


def _print_reward_model(reward) -> None:
    """A reward model of `sana finetune --rl` and `sana gen --best-of`: its repos and what of them is on disk."""
    from sana import hub
    from sana.rewards.models import locate_reward_model, reward_model_status

    status, size = reward_model_status(reward)
    rows = [("name", reward.name), ("kind", "reward model (sana finetune --rl --reward, sana gen --best-of)"),
            ("description", reward.description), ("repos", ", ".join(reward.repos)),
            ("downloaded", f"{status}, {hub.human_size(size)} on disk" if status != "no"
             else f"no (sana models pull {reward.name})")]
    if status == "yes":
        weights, processor = locate_reward_model(reward.name)
        rows.append(("path", str(weights) if weights == processor else f"{weights} (processor: {processor})"))
    console.table(_key_value_table(rows))


def _download_sizes(spec: ModelSpec) -> Table:
    """One column a precision, one row a component: narrow enough for any terminal."""
    from sana.hub import human_size

    components = list(dict.fromkeys(c for w in spec.weights.values() for c in w.bytes))
    table = Table(title="download size", header_style="bold", title_justify="left")
    table.add_column("component")
    for precision in spec.weights:
        default = " (default)" if precision == spec.defaults.get("dtype") else ""
        table.add_column(precision + default, justify="right", no_wrap=True)
    table.add_row("files", *[f"*.{w.variant}.safetensors" if w.variant else "default" for w in spec.weights.values()])
    for component in components:
        table.add_row(component, *[human_size(w.bytes.get(component)) for w in spec.weights.values()])
    table.add_row("total", *[human_size(w.total_bytes) for w in spec.weights.values()], style="bold")
    return table


def _print_directory(path: Path, label: str) -> None:
    from sana import hub

    missing = hub.missing_files(path)  # first: it turns an unreadable model_index.json into a one-line error
    index_file = path / "model_index.json"
    index = json.loads(index_file.read_text(encoding="utf-8")) if index_file.is_file() else {}
    console.table(_key_value_table([
        ("model", label), ("path", str(path)), ("pipeline", index.get("_class_name", "-")),
        ("missing files", ", ".join(missing) or "none"),
    ]))
    table = Table(title="components", header_style="bold", title_justify="left")
    for column in ("component", "params", "on disk"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for component in hub.local_components(path):
        table.add_row(component.name, hub.human_count(component.params), hub.human_size(component.size_on_disk))
    console.table(table)
    config = hub.transformer_config(path)
    if config:
        _print_json("transformer config", config)


@models_app.command("pull")
def pull_command(
    name: Annotated[str, typer.Argument(help="Registry name or alias, or hub org/name id.")],
    precision: Annotated[Optional[str], typer.Option(
        "--precision", help="fp32, fp16 or bf16: which weight files to fetch (default: the model's own).")] = None,
) -> None:
    """Download the files one precision needs into the hub cache (resumable; HF_HOME, HF_TOKEN, HF_ENDPOINT apply)."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    from sana import hub
    from sana.rewards.models import find_reward_model, pull_reward_model

    _check_precision(precision)
    reward = find_reward_model(name)  # a reward model of `sana finetune --rl` (transformers layout, two repos)
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=False),
                        TransferSpeedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[files]}"),
                        console=console.err, disable=console.settings.quiet)
    task = progress.add_task(f"pulling {name}", total=None, files="")
    started = False

    def show(state: hub.PullProgress) -> None:
        # Started on the first report, so that an error before the download is the only line printed.
        nonlocal started
        if not started:
            progress.start()
            started = True
        progress.update(task, description=f"pulling {state.repo}", completed=state.done_bytes,
                        total=state.total_bytes, files=f"{state.files_done}/{state.files_total} files")

    try:
        try:
            path = pull_reward_model(reward, on_progress=show)[0] if reward else \
                hub.pull(name, precision=precision, on_progress=show)
        finally:
            if started:  # stopping a progress that never started still prints a blank line off a terminal
                progress.stop()
    except KeyboardInterrupt:
        # The hub client's download threads would finish their files before Python exits; the `.incomplete`
        # blobs they leave are what the next pull resumes from, so exiting now loses nothing.
        console.error(f"interrupted; run `sana models pull {name}` again to resume")
        sys.stderr.flush()
        os._exit(130)
    if reward is None:
        hub.resolve_model(name, precision=precision)  # the repo may lack a component: say so now, not at `gen`
    console.out.print(str(path), highlight=False)


@models_app.command("rm")
def rm_command(
    name: Annotated[str, typer.Argument(help="Registry name or alias, or hub org/name id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking.")] = False,
) -> None:
    """Delete every cached revision of a model from the hub cache."""
    from sana import hub
    from sana.errors import ModelNotFound
    from sana.hub.cache import repo_folder  # what `hub.remove` deletes: a repo's folder, complete or not

    from sana.rewards.models import find_reward_model

    reward = find_reward_model(name)  # a reward model is two repos at most (PickScore's processor lives apart)
    repos = reward.repos if reward is not None else [hub.repo_for(name, "rm")[0]]
    present = [repo for repo in repos if repo_folder(repo) is not None]
    if not present:  # said before asking: there is nothing to confirm
        raise ModelNotFound(f"{name} ({', '.join(repos)}) is not downloaded", "nothing to remove; see sana models list")
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"not deleting {', '.join(present)} without confirmation", "pass --yes")
        typer.confirm(f"delete {', '.join(present)} from {hub.hub_cache_dir()}?", abort=True)
    for repo in present:
        removed, freed = hub.remove(repo if reward is not None else name)
        console.result(f"removed {removed} ({hub.human_size(freed)} freed)")


@models_app.command("path")
def path_command(
    name: Annotated[str, typer.Argument(help=NAME_HELP)],
    precision: Annotated[Optional[str], typer.Option("--precision", help="Require this precision's weights.")] = None,
) -> None:
    """Print the local directory of a model (nothing else, for scripts)."""
    from sana.hub import resolve_model
    from sana.rewards.models import find_reward_model, locate_reward_model

    _check_precision(precision)
    reward = find_reward_model(name)
    path = locate_reward_model(reward.name)[0] if reward else resolve_model(name, precision=precision).path
    console.out.print(str(path), highlight=False, soft_wrap=True)
