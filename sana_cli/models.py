"""`sana models`: list, inspect, download and remove registry models."""

import typer

models_app = typer.Typer(help="List, inspect, download and remove models.", no_args_is_help=True)
