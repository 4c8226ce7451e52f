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


def _echo_json(data: Any) -> None:
    # Plain write: rich would wrap long lines and colour the JSON, which breaks piping into other tools.
    typer.echo(json.dumps(data, indent=2))


AsJson = Annotated[bool, typer.Option("--json", help="Print it as JSON to stdout (sizes in bytes), for scripts.")]


@models_app.command("list")
def list_command(as_json: AsJson = False) -> None:
    """The registry, and which models are in the hub cache."""
    from sana.hub import human_count, human_size

    entries = _listing()
    if as_json:
        _echo_json(entries)
        return
    table = Table(header_style="bold")
    for column, justify in (("name", "left"), ("family", "left"), ("resolution", "right"), ("params", "right"),
                            ("downloaded", "left"), ("on disk", "right")):
        table.add_column(column, justify=justify, no_wrap=True)
    for entry in entries:
        table.add_row(entry["name"], entry["family"] or "-",
                      f"{entry['resolution']} px" if entry["resolution"] else "-",
                      human_count(entry["params"]) if entry["params"] is not None else "-", entry["downloaded"],
                      human_size(entry["size_on_disk"]) if entry["downloaded"] != "no" else "-")
    console.table(table)


def _listing() -> list[dict[str, Any]]:
    """`models list`'s rows: the registry, SANA pipelines cached under other ids, then the reward models."""
    from sana.hub import list_models
    from sana.rewards.models import REWARD_MODELS, reward_model_status

    entries = []
    for entry in list_models():
        spec = entry.spec
        entries.append({"name": entry.name, "kind": "model", "family": entry.family, "repo": entry.repo,
                        "aliases": list(spec.aliases) if spec else [], "description": spec.description if spec else None,
                        "resolution": spec.resolution if spec else None,
                        "params": spec.transformer_params if spec else None,  # the transformer's, as the table
                        "downloaded": entry.status, "size_on_disk": entry.size_on_disk})
    for reward in REWARD_MODELS.values():  # the reward models of `sana finetune --rl`
        status, size = reward_model_status(reward)
        entries.append({"name": reward.name, "kind": "reward", "family": "reward", "repo": reward.repo,
                        "aliases": [], "description": reward.description, "resolution": None, "params": None,
                        "downloaded": status, "size_on_disk": size, "processor_repo": reward.processor_repo})
    return entries


@models_app.command("info")
def info_command(name: Annotated[str, typer.Argument(help=NAME_HELP)], as_json: AsJson = False) -> None:
    """Everything known about a model, without network: preset, sizes per precision, transformer config."""
    from sana import hub
    from sana.registry import find_spec

    from sana.rewards.models import find_reward_model

    # 1. What NAME is: a reward model, a local directory, a registry model, or a cached repo the registry does not
    #    know (for the last two: what is on disk, complete or not).
    local = Path(name).expanduser()
    reward = None if local.exists() else find_reward_model(name)
    spec = None if local.exists() or reward else find_spec(name)
    if reward is not None:
        record, show = _reward_record(reward), _print_reward_model
    elif spec is not None:
        record, show = _registry_record(spec), lambda r: _print_registry_model(r, spec)
    else:
        if local.exists():
            path = hub.require_model_directory(local, name)
        else:
            cached = hub.cached_snapshot(name)
            path = cached[0] if cached else hub.resolve_model(name).path  # resolving says why not
        record, show = _directory_record(path, name), _print_directory

    # 2. As JSON, or as tables.
    if as_json:
        _echo_json(record)
    else:
        show(record)


def _registry_record(spec: ModelSpec) -> dict[str, Any]:
    """A registry model: its preset, and its state on disk."""
    from sana import hub

    record = {"name": spec.name, "kind": "model", "aliases": list(spec.aliases), "repo": spec.repo,
              "family": spec.family, "description": spec.description, "resolution": spec.resolution,
              "pipeline": spec.pipeline, "verified": spec.verified, "embedded": bool(spec.extra.get("embedded"))}
    if record["embedded"]:  # shipped inside the package (nano): installed or not, never downloaded
        from sana.embedded import embedded_env, embedded_model_dir

        path = embedded_model_dir(spec.extra["embedded"])
        record.update(downloaded="yes" if path else "no", path=str(path) if path else None,
                      size_on_disk=sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path else 0,
                      env=embedded_env(spec.extra["embedded"]))
    else:
        cached = hub.cached_repos().get(spec.repo.lower())
        missing = [] if cached is None else hub.missing_files(cached.snapshot) if cached.snapshot else ["every file"]
        record.update(downloaded="no" if cached is None else "partial" if missing else "yes",
                      size_on_disk=cached.size_on_disk if cached else 0,
                      path=str(cached.snapshot or cached.path) if cached else None, missing_files=missing)
    record.update(
        params=dict(spec.params), default_precision=spec.defaults.get("dtype"),
        weights={precision: {"files": f"*.{w.variant}.safetensors" if w.variant else "default",
                             "bytes": dict(w.bytes), "total_bytes": w.total_bytes}
                 for precision, w in spec.weights.items()},
        defaults=spec.defaults, transformer=spec.transformer)
    return record


def _print_registry_model(record: dict[str, Any], spec: ModelSpec) -> None:
    from sana import hub

    name = record["name"]
    rows = [("name", name), ("aliases", ", ".join(record["aliases"]) or "-"), ("repo", record["repo"]),
            ("family", record["family"]), ("description", record["description"]),
            ("resolution", f"{record['resolution']} px"), ("pipeline", record["pipeline"])]
    if not record["verified"]:
        rows.append(("verified", "no (values from the model's documentation, not checked against the repo)"))
    if record["embedded"]:
        rows.append(("installed", f"yes, in the package: {record['path']}" if record["path"] else
                     f"no (this installation lacks it; {record['env']} can point at a {name} model folder)"))
    elif record["downloaded"] == "no":
        rows.append(("downloaded", f"no (sana models pull {name})"))
    else:
        rows += [("downloaded", f"{record['downloaded']}, {hub.human_size(record['size_on_disk'])} on disk"),
                 ("path", record["path"])]
        if record["missing_files"]:
            rows.append(("missing files", f"{', '.join(record['missing_files'])} (sana models pull {name})"))
    console.table(_key_value_table(rows))

    params = Table(title="parameters", header_style="bold", title_justify="left")
    params.add_column("component")
    params.add_column("params", justify="right")
    for component, count in record["params"].items():
        params.add_row(component, f"{hub.human_count(count)} ({count:,})")
    console.out.print(params)
    console.out.print(_download_sizes(spec))
    _print_json("defaults", record["defaults"])
    _print_json("transformer config", record["transformer"])


def _reward_record(reward) -> dict[str, Any]:
    """A reward model of `sana finetune --rl` and `sana gen --best-of`: its repos and what of them is on disk."""
    from sana.rewards.models import locate_reward_model, reward_model_status

    status, size = reward_model_status(reward)
    weights, processor = locate_reward_model(reward.name) if status == "yes" else (None, None)
    return {"name": reward.name, "kind": "reward", "description": reward.description, "repos": reward.repos,
            "downloaded": status, "size_on_disk": size, "path": str(weights) if weights else None,
            "processor_path": str(processor) if processor else None}


def _print_reward_model(record: dict[str, Any]) -> None:
    from sana import hub

    rows = [("name", record["name"]), ("kind", "reward model (sana finetune --rl --reward, sana gen --best-of)"),
            ("description", record["description"]), ("repos", ", ".join(record["repos"])),
            ("downloaded", f"{record['downloaded']}, {hub.human_size(record['size_on_disk'])} on disk"
             if record["downloaded"] != "no" else f"no (sana models pull {record['name']})")]
    if record["path"]:
        weights, processor = record["path"], record["processor_path"]
        rows.append(("path", weights if weights == processor else f"{weights} (processor: {processor})"))
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


def _directory_record(path: Path, label: str) -> dict[str, Any]:
    """A local model directory, or a cached repo the registry does not know: what is on disk."""
    from sana import hub

    missing = hub.missing_files(path)  # first: it turns an unreadable model_index.json into a one-line error
    index_file = path / "model_index.json"
    index = json.loads(index_file.read_text(encoding="utf-8")) if index_file.is_file() else {}
    return {"name": label, "kind": "model", "path": str(path), "pipeline": index.get("_class_name"),
            "missing_files": missing,
            "components": [{"name": c.name, "params": c.params, "size_on_disk": c.size_on_disk}
                           for c in hub.local_components(path)],
            "transformer": hub.transformer_config(path)}


def _print_directory(record: dict[str, Any]) -> None:
    from sana import hub

    console.table(_key_value_table([
        ("model", record["name"]), ("path", record["path"]), ("pipeline", record["pipeline"] or "-"),
        ("missing files", ", ".join(record["missing_files"]) or "none"),
    ]))
    table = Table(title="components", header_style="bold", title_justify="left")
    for column in ("component", "params", "on disk"):
        table.add_column(column, justify="left" if column == "component" else "right")
    for component in record["components"]:
        table.add_row(component["name"], hub.human_count(component["params"]),
                      hub.human_size(component["size_on_disk"]))
    console.table(table)
    if record["transformer"]:
        _print_json("transformer config", record["transformer"])


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
    if reward is None and _pulled_already(name):
        return
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


def _pulled_already(name: str) -> bool:
    """A model that ships inside the package (nano, nano-video) has nothing to pull: said, its folder printed, and
    success, so `sana models pull X && sana gen -m X` works for every registry model. One this installation lacks
    is an error naming how to build it."""
    from sana.embedded import embedded_name
    from sana.hub import resolve_model
    from sana.registry import find_spec

    spec = find_spec(name)
    if not embedded_name(spec):
        return False
    path = resolve_model(name).path
    console.notice(f"{spec.name} ships inside the package: nothing to pull (use it with --model {spec.name})")
    console.out.print(str(path), highlight=False)
    return True


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
