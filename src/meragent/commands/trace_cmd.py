"""``meragent trace``: list runs, show one clip step by step, export a run as HTML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from meragent.commands.errors import fail, friendly_errors
from meragent.config import load_settings

app = typer.Typer(help="Inspect what the pipeline did, node by node.", no_args_is_help=True)

RunArgument = Annotated[str, typer.Argument(help="Run name (a folder under runs/).")]


def _pretty(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@app.command("list")
@friendly_errors
def list_runs() -> None:
    """List the runs under the home folder with their status and clip counts.

    ``degraded``: clips answered from what remained (media not decoded, subtitle used).
    """
    from rich.console import Console
    from rich.table import Table

    from meragent.graphs.batch import batch_alive
    from meragent.graphs.trace import TRACE_FILE, read_trace

    settings = load_settings()
    runs_dir = settings.runs_dir
    folders = sorted(p for p in runs_dir.glob(f"*/{TRACE_FILE}")) if runs_dir.is_dir() else []
    if not folders:
        typer.echo(f"no runs under {runs_dir}")
        return
    table = Table(
        "run", "status", "track", "profile", "ok", "degraded", "failed", "clips", "updated"
    )
    for path in folders:
        with read_trace(path.parent) as store:
            for run in store.runs():
                # A batch killed with SIGKILL never wrote its end: say so instead of "running".
                dead = run.status == "running" and not batch_alive(path.parent)
                table.add_row(
                    run.run_id,
                    "interrupted" if dead else run.status,
                    run.track or "",
                    run.profile or "",
                    str(run.n_ok),
                    str(run.n_degraded),
                    str(run.n_failed),
                    str(run.n_clips),
                    run.updated_at,
                )
    Console().print(table)


@app.command("show")
@friendly_errors
def show(
    run: RunArgument,
    clip: Annotated[str, typer.Argument(help="Clip id within the run.")],
    full: Annotated[
        bool, typer.Option(help="Print whole prompts and outputs instead of the first lines.")
    ] = False,
) -> None:
    """Show one clip's steps: inputs, prompt, raw and parsed output, timing, errors."""
    from rich.console import Console
    from rich.panel import Panel
    from rich.text import Text

    from meragent.graphs.batch import run_dir_for
    from meragent.graphs.trace import read_trace

    settings = load_settings()
    with read_trace(run_dir_for(settings, run)) as store:
        steps = store.steps(run, clip)
        results = [r for r in store.results(run) if r.clip_id == clip]
    if not steps and not results:
        raise fail(f"no clip {clip!r} in run {run!r}")
    console = Console()
    limit = None if full else 12

    def clipped(text: str) -> str:
        lines = text.splitlines()
        if limit is None or len(lines) <= limit:
            return text
        return "\n".join([*lines[:limit], f"… ({len(lines) - limit} more lines, use --full)"])

    for step in steps:
        body = Text()
        for title, value in (
            ("inputs", step.inputs),
            ("prompt", step.prompt),
            ("raw output", step.raw_output),
            ("parsed output", step.parsed_output),
        ):
            if value in (None, "", [], {}):
                continue
            body.append(f"{title}\n", style="bold")
            body.append(clipped(_pretty(value)) + "\n")
        if step.error:
            body.append(f"error: {step.error}\n", style="red")
        retries = f", {step.retries} retries" if step.retries else ""
        title = f"{step.node} · {step.model_id or '-'} · {step.latency_s * 1000:.1f} ms{retries}"
        console.print(Panel(body, title=Text(title), title_align="left"))
    for record in results:
        answer = f"{record.status}: six-class {record.discrete}, labels {record.openset}"
        console.print(Text(answer + (f" — {record.error}" if record.error else "")))


@app.command("export")
@friendly_errors
def export(
    run: RunArgument,
    html: Annotated[Path, typer.Option("--html", help="Where to write the HTML page.")],
) -> None:
    """Write one self-contained HTML page for a run (clip list, step timeline per clip)."""
    from meragent.graphs.batch import run_dir_for
    from meragent.graphs.report import export_run_html

    settings = load_settings()
    out = export_run_html(run_dir_for(settings, run), html)
    typer.echo(f"wrote {out}")
