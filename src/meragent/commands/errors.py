"""Turn user-facing errors into one line on stderr and a non-zero exit, never a traceback.

Every line goes through :func:`meragent.secrets.scrub` (a server may echo the API key).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from meragent.errors import MeragentError
from meragent.secrets import scrub

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` (scrubbed of secrets) to stderr and return the Exit to raise."""
    typer.echo(scrub(f"error: {message}"), err=True)
    return typer.Exit(code=code)


def friendly_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command so a MeragentError (or a missing file) ends it with one clear line."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except MeragentError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except FileNotFoundError as exc:
            raise fail(f"file not found: {exc.filename or exc}") from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None

    return wrapper


def say(message: str, *, err: bool = False) -> None:
    """Print one line for the user (stdout, or stderr with ``err``), scrubbed of secrets."""
    typer.echo(scrub(message), err=err)
