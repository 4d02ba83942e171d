"""Typer option types shared by several commands (one help text, one place to change it)."""

from __future__ import annotations

from typing import Annotated

import typer

ProfileOption = Annotated[
    str | None, typer.Option(help="Profile name (offline|small|full) or a TOML path.")
]
