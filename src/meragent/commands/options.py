"""Typer option types shared by several commands (one help text, one place to change it), and
option groups: several options that more than one command takes, declared once as a dataclass."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

R = TypeVar("R")

ProfileOption = Annotated[
    str | None, typer.Option(help="Profile name (offline|small|full) or a TOML path.")
]
SplitOption = Annotated[
    str | None, typer.Option(help="Only this split of the source (train, test1, ...).")
]
DataRootOption = Annotated[
    Path | None,
    typer.Option(
        "--data-root", help="Folder manifest paths resolve against (default: its folder)."
    ),
]


def option_groups(command: Callable[..., R]) -> Callable[..., R]:
    """Let ``command`` take a group of options as one parameter typed with a dataclass.

    On the command line the group stands, in the parameter's place, as the dataclass' fields
    (each field an option: its ``Annotated`` type, help text and default); the command gets
    them as one instance. Typer reads a command's options from its signature, so this gives
    the wrapper the expanded signature. Fields become keyword-only parameters.
    """
    hints = typing.get_type_hints(command, include_extras=True)
    groups: dict[str, Any] = {}
    parameters: list[inspect.Parameter] = []
    for parameter in inspect.signature(command).parameters.values():
        annotation = hints[parameter.name]
        if not (isinstance(annotation, type) and dataclasses.is_dataclass(annotation)):
            parameters.append(parameter.replace(annotation=annotation))
            continue
        groups[parameter.name] = annotation
        field_hints = typing.get_type_hints(annotation, include_extras=True)
        parameters.extend(
            inspect.Parameter(
                field.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=(
                    inspect.Parameter.empty
                    if field.default is dataclasses.MISSING
                    else field.default
                ),
                annotation=field_hints[field.name],
            )
            for field in dataclasses.fields(annotation)
        )

    @functools.wraps(command)
    def wrapper(*args: Any, **options: Any) -> R:
        for name, group in groups.items():
            names = [field.name for field in dataclasses.fields(group) if field.name in options]
            fields = {field: options.pop(field) for field in names}
            if name not in options:  # a direct caller may pass the group itself
                options[name] = group(**fields)
        return command(*args, **options)

    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper
