"""``meragent config``: show the resolved configuration."""

from __future__ import annotations

import json

import typer

from meragent.commands.errors import friendly_errors
from meragent.commands.options import ProfileOption
from meragent.config import load_settings

app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)


@app.command("show")
@friendly_errors
def show(
    profile: ProfileOption = None,
) -> None:
    """Print the resolved config (profile + environment) as JSON, secrets masked."""
    settings = load_settings(profile=profile)
    typer.echo(json.dumps(settings.masked_dump(), indent=2, default=str))
