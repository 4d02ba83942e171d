"""``meragent config``: show the resolved configuration."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from meragent.commands.errors import friendly_errors
from meragent.config import load_settings

app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)


@app.command("show")
@friendly_errors
def show(
    profile: Annotated[
        str | None, typer.Option(help="Profile name (offline|small|full) or a TOML path.")
    ] = None,
) -> None:
    """Print the resolved config (profile + environment) as JSON, secrets masked."""
    settings = load_settings(profile=profile)
    typer.echo(json.dumps(settings.masked_dump(), indent=2, default=str))
