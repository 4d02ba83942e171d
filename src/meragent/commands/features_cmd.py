"""``meragent features``: fill the feature cache (MERTools layout) for a whole manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meragent.commands.errors import friendly_errors
from meragent.config import load_settings

app = typer.Typer(help="Extract and cache per-clip embeddings.", no_args_is_help=True)


@app.command("extract")
@friendly_errors
def extract(
    source: Annotated[
        Path, typer.Argument(help="Manifest file or folder (MER layouts, CSV/JSONL, videos).")
    ],
    encoder: Annotated[
        str,
        typer.Option(
            help="acoustic|visual|lexical (the profile's model), prosody|fer|minilm, "
            "or KIND:MODEL with KIND hubert|wav2vec2|clip|hf|minilm."
        ),
    ],
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per forward pass.")] = 16,
    layers: Annotated[
        int | None,
        typer.Option(min=1, help="Sum of the last N hidden layers (default 4, MERTools)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda or auto (default: the settings' device).")
    ] = None,
    profile: Annotated[
        str | None, typer.Option(help="Profile name (offline|small|full) or a TOML path.")
    ] = None,
    home: Annotated[
        Path | None, typer.Option(help="meragent home (features go to HOME/features).")
    ] = None,
) -> None:
    """Embed every clip of SOURCE with ENCODER, skipping clips already cached."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from meragent.tools.extract import dumps_summary, extract_features

    settings = load_settings(profile=profile, home=home)
    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(f"features {encoder}", total=None)
        report = extract_features(
            settings,
            source,
            encoder,
            batch_size=batch_size,
            device=device,
            layers=layers,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    typer.echo(dumps_summary(report))
    for failure in report.failures[:20]:
        typer.echo(f"failed: {failure.clip_id} ({failure.stage}): {failure.reason}", err=True)
    for error in report.manifest_errors[:20]:
        typer.echo(f"skipped row: {error}", err=True)
    if report.failures:
        raise typer.Exit(code=1)
