"""``meragent data``: validate clip sources and write synthetic clips."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meragent.commands.choices import MediaOption, SynthAudio
from meragent.commands.errors import friendly_errors

if TYPE_CHECKING:
    from meragent.data.check import CheckReport
    from meragent.schema import Clip

app = typer.Typer(help="Check clip sources and make synthetic clips.", no_args_is_help=True)


@app.command("check")
@friendly_errors
def check(
    source: Annotated[
        Path,
        typer.Argument(
            help="A MER2024/MER2023 folder, a CSV/JSONL manifest, a folder of videos or a video."
        ),
    ],
    data_root: Annotated[
        Path | None,
        typer.Option(
            "--data-root",
            help="Folder that manifest paths resolve against and must stay inside "
            "(default: the manifest's folder).",
        ),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="Only this split (MER layouts: train, test1, ...; CSV: 'split' column)."),
    ] = None,
    probe: Annotated[
        bool,
        typer.Option("--probe", help="Also open each video's header and report unreadable files."),
    ] = False,
    media: Annotated[
        MediaOption,
        typer.Option(
            help="required: rows need media (or a subtitle), as for batch/run; optional: rows "
            "without media are usable, as for fusion and text features (labels + features)."
        ),
    ] = MediaOption.required,
) -> None:
    """Validate a clip source; print a summary and one line per bad row.

    Exit 0 when every row is usable, 1 when some are not (the summary says how many), 2 when
    the source itself cannot be read.
    """
    from meragent.data.check import check_source

    report = check_source(source, data_root=data_root, split=split, probe=probe, media=media.value)
    _print_report(report)
    if report.errors:
        for error in report.errors:
            typer.echo(f"error: {error}", err=True)
        if report.media == "required" and report.missing_files:
            typer.echo(
                "hint: fusion and text features need labels and cached features only; "
                "check that use with --media optional"
            )
        raise typer.Exit(code=1)


@app.command("labels")
@friendly_errors
def labels(
    source: Annotated[
        Path, typer.Argument(help="Any clip source with labels (MER folder, label-6way.npz, CSV).")
    ],
    out: Annotated[Path, typer.Option(help="CSV to write: name,discrete,valence.")],
    split: Annotated[
        str | None, typer.Option(help="Only this split (MER layouts: train, test1, ...).")
    ] = None,
) -> None:
    """Write a source's six-class labels (and valence) as the CSV ``meragent eval six`` reads.

    Media is not needed (e.g. MERTools' label-6way.npz alone). Rows without a six-class label
    are left out; a missing valence is written empty. Exit 1 when some rows were unusable.
    """
    from meragent.data.manifest import load_manifest

    loaded = load_manifest(source, split=split, media="optional")
    labelled = [clip for clip in loaded.clips if clip.discrete is not None]
    _write_labels(labelled, out)
    typer.echo(f"wrote {len(labelled)} labelled clips -> {out}")
    if loaded.errors:
        for error in loaded.errors:
            typer.echo(f"error: {error}", err=True)
        typer.echo(f"{len(loaded.errors)} unusable rows left out")
        raise typer.Exit(code=1)


def _write_labels(clips: list[Clip], path: Path) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["name", "discrete", "valence"])
        for clip in clips:
            valence = "" if clip.valence is None else f"{clip.valence:g}"
            writer.writerow([clip.id, clip.discrete, valence])


@app.command("synth")
@friendly_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write video/*.mp4 and manifest.csv into.")],
    n: Annotated[int, typer.Option("--n", min=1, help="Number of clips to write.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed for the per-clip motion and noise.")] = 0,
    duration: Annotated[
        float,
        typer.Option(min=0.1, help="Minimum clip length in seconds (grows to fit the sentence)."),
    ] = 2.0,
    audio: Annotated[
        SynthAudio, typer.Option(help="Audio track: a spoken sentence or a tone.")
    ] = SynthAudio.speech,
) -> None:
    """Write K synthetic talking-face clips (real face photo, speech) and a CSV manifest."""
    from meragent.data.synth import make_synthetic_dataset

    manifest = make_synthetic_dataset(out, n, seed=seed, duration_s=duration, audio=audio.value)
    typer.echo(f"wrote {n} clips; manifest: {manifest}")


def _print_report(report: CheckReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report.source} ({report.layout})", show_header=False)
    table.add_column("field")
    table.add_column("value", justify="right")
    if report.splits:
        using = f" (using {report.split})" if report.split else ""
        table.add_row("splits", ", ".join(report.splits) + using)
    table.add_row("clips", str(report.n_clips))
    table.add_row("bad rows", str(report.n_errors))
    table.add_row("missing files", str(len(report.missing_files)))
    for name, count in report.class_histogram.items():
        table.add_row(f"  {name}", str(count))
    table.add_row("with video", str(report.n_with_video))
    table.add_row("with subtitle", str(report.n_with_subtitle))
    table.add_row("with open-set labels", str(report.n_with_openset))
    table.add_row("with valence", str(report.n_with_valence))
    table.add_row("with audio file", str(report.n_with_audio_file))
    table.add_row("without media", str(report.n_without_media))
    if report.n_probed:
        table.add_row("headers probed", str(report.n_probed))
    Console(soft_wrap=True).print(table)
