"""The ``meragent`` command line: a root typer app composed of one sub-app per command group.

Every command is thin (parse, build a config, call one library function); the groups live in
``meragent.commands`` so this module stays a table of contents.
"""

from __future__ import annotations

import sys
import traceback
from typing import Annotated

import typer

from meragent.commands import (
    config_cmd,
    corrupt_cmd,
    data_cmd,
    eval_cmd,
    features_cmd,
    finetune_cmd,
    fusion_cmd,
    pipeline_cmd,
    trace_cmd,
)
from meragent.commands.terminal import configure_terminal
from meragent.secrets import scrub

app = typer.Typer(
    name="meragent",
    help="Multimodal emotion recognition agent (MER2023/MER2024: six-class and open-vocabulary).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def root(
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="Show the libraries' INFO log lines on stderr (twice: DEBUG) and their "
            "progress bars; by default only warnings, and stdout carries only the results.",
        ),
    ] = 0,
) -> None:
    """Multimodal emotion recognition agent (MER2023/MER2024: six-class and open-vocabulary)."""
    configure_terminal(verbose)


app.add_typer(config_cmd.app, name="config")
# The MER-NOISE corruption tool lives with the fusion work but belongs to the data group.
data_cmd.app.command("corrupt")(corrupt_cmd.corrupt)
app.add_typer(data_cmd.app, name="data")
app.add_typer(features_cmd.app, name="features")
app.add_typer(eval_cmd.app, name="eval")
app.add_typer(fusion_cmd.app, name="fusion")
app.add_typer(finetune_cmd.app, name="finetune")
app.add_typer(trace_cmd.app, name="trace")
pipeline_cmd.register(app)


def main() -> None:
    """Console-script entry point; an unexpected traceback is scrubbed of secrets too."""
    try:
        app()
    except Exception:  # a bug, not a user error (those end in one line): show it, key removed
        sys.stderr.write(scrub(traceback.format_exc()))
        sys.exit(1)
