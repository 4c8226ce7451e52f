"""`sana models`: list, inspect, download and remove models."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from sana.errors import UsageError

from . import console

models_app = typer.Typer(help="List, inspect, download and remove models.", no_args_is_help=True)


def _gb(n: int | float) -> str:
    return f"{n / 1e9:.2f} GB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


@models_app.command("list")
def list_models() -> None:
    """The registry, with what is downloaded (sizes in GB = 1e9 bytes, as the hub shows them)."""
    from sana.hub import cached_repos
    from sana.registry import all_specs

    cached = cached_repos()
    table = Table(show_edge=False, header_style="bold")
    for column in ("name", "family", "res", "params", "downloaded", "on disk"):
        table.add_column(column, justify="right" if column in ("res", "params", "on disk") else "left", no_wrap=True)
    for spec in all_specs():
        repo = cached.get(spec.repo.lower())
        table.add_row(spec.name, spec.family, str(spec.resolution), _params(spec.transformer_params),
                      "yes" if repo else "no", _gb(repo.size_on_disk) if repo else "-")
    console.out.print(table)


@models_app.command("info")
def info(name: Annotated[str, typer.Argument(help="Registry name, org/repo id or local directory.")]) -> None:
    """Everything known about a model, without network."""
    from sana.hub import repo_for
    from sana.registry import get_spec

    local = Path(name).expanduser()
    if local.is_dir():
        _info_directory(local)
        return
    repo, spec = repo_for(name)
    if spec is None:
        spec = get_spec(repo)
    console.out.print(f"[bold]{spec.name}[/bold]  {spec.description}", highlight=False)
    rows = [("repo", spec.repo), ("aliases", ", ".join(spec.aliases) or "-"), ("family", spec.family),
            ("resolution", f"{spec.resolution} px"), ("pipeline", spec.pipeline),
            ("verified", "yes" if spec.verified else "no (some values are best estimates)")]
    rows += [(f"params: {k}", f"{v:,}") for k, v in spec.params.items()]
    rows += [(f"default {k}", json.dumps(v) if isinstance(v, (dict, list)) else str(v)) for k, v in spec.defaults.items()]
    _print_rows(rows)
    sizes = Table(title="download size (GB)", show_edge=False, header_style="bold")
    components = sorted({c for w in spec.weights.values() for c in w.bytes})
    for column in ("precision", "files", *components, "total"):
        sizes.add_column(column, justify="left" if column in ("precision", "files") else "right")
    for precision, weights in spec.weights.items():
        files = f"*.{weights.variant}.safetensors" if weights.variant else "default"
        sizes.add_row(precision, files, *[f"{weights.bytes.get(c, 0) / 1e9:.2f}" for c in components],
                      f"{weights.total_bytes / 1e9:.2f}")
    console.out.print(sizes)
    console.out.print("[bold]transformer config[/bold]")
    console.out.print_json(json.dumps(spec.transformer))


def _info_directory(path: Path) -> None:
    from sana.components import model_index, read_json

    index = model_index(path)
    config_path = path / "transformer" / "config.json" if (path / "transformer").is_dir() else path / "config.json"
    if not index and not config_path.is_file():
        raise UsageError(f"{path} is not a model directory: no model_index.json or config.json")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    _print_rows([("directory", str(path.resolve())), ("pipeline", index.get("_class_name", "-")), ("size on disk", _gb(size))])
    if config_path.is_file():
        console.out.print("[bold]transformer config[/bold]")
        console.out.print_json(json.dumps(read_json(config_path)))


def _print_rows(rows: list[tuple[str, str]]) -> None:
    table = Table(show_header=False, show_edge=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, value)
    console.out.print(table)


@models_app.command("pull")
def pull(
    name: Annotated[str, typer.Argument(help="Registry name or org/repo id.")],
    precision: Annotated[Optional[str], typer.Option("--precision", help="fp32, fp16 or bf16 (default: the model's recommended).")] = None,
) -> None:
    """Download only the files one precision needs into the hub cache (resumable)."""
    from sana import hub

    if precision not in (None, "fp32", "fp16", "bf16"):
        raise UsageError(f"unknown precision '{precision}'", "use fp32, fp16 or bf16")
    path = hub.pull(name, precision=precision)
    console.out.print(str(path), highlight=False)


@models_app.command("rm")
def remove(
    name: Annotated[str, typer.Argument(help="Registry name or org/repo id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
) -> None:
    """Delete a model from the hub cache."""
    from sana import hub

    repo, spec = hub.repo_for(name)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(f"refusing to delete {repo} without confirmation", "pass --yes")
        typer.confirm(f"delete {repo} from {hub.cache_dir()}?", abort=True)
    freed = hub.remove(name)
    console.info(f"removed {repo}, freed {_gb(freed)}")


@models_app.command("path")
def path(name: Annotated[str, typer.Argument(help="Registry name, org/repo id or directory.")]) -> None:
    """Print the local folder of a downloaded model."""
    from sana.hub import resolve_model

    console.out.print(str(resolve_model(name).path), highlight=False, soft_wrap=True)
