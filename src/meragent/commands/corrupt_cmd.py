"""``meragent data corrupt``: MER-NOISE copies of a dataset (speech noise at an SNR, blur).

The lead registers :func:`corrupt` on the ``data`` group; the function is a plain typer command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meragent.commands.errors import friendly_errors
from meragent.commands.options import DataRootOption, SplitOption


@friendly_errors
def corrupt(
    source: Annotated[
        Path,
        typer.Argument(
            help="Clips to corrupt: a MER folder, a CSV/JSONL manifest or a video folder."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="Folder to write video/*.mp4 and manifest.csv into.")],
    noise_dir: Annotated[
        Path | None,
        typer.Option(
            "--noise-dir",
            help="Noise clips (e.g. MUSAN speech); default: babble from the other clips' speech.",
        ),
    ] = None,
    snr: Annotated[
        str,
        typer.Option(
            help="SNR in dB per clip: A:B (integers A..B, as the organisers), a list "
            "5,7,10 or one value."
        ),
    ] = "5:10",
    blur: Annotated[
        str, typer.Option(help="Blur factors r to draw from (powers of two; 1 = no blur).")
    ] = "1,2,4",
    seed: Annotated[int, typer.Option(help="Seed of the per-clip draws (SNR, r, noise).")] = 0,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N clips (for a quick look).")
    ] = None,
    split: SplitOption = None,
    data_root: DataRootOption = None,
) -> None:
    """Write a MER-NOISE copy of SOURCE: noisy audio, blurred frames, SNR and r per clip."""
    from meragent.data.corrupt import CorruptConfig, corrupt_dataset, parse_blur
    from meragent.data.manifest import load_manifest

    config = CorruptConfig(snr=snr, blur=list(parse_blur(blur)), seed=seed, noise_dir=noise_dir)
    loaded = load_manifest(source, data_root=data_root, split=split)
    for error in loaded.errors[:10]:
        typer.echo(f"warning: {error}", err=True)
    clips = loaded.clips[:limit] if limit is not None else loaded.clips
    report = corrupt_dataset(clips, out, config, progress=lambda m: typer.echo(m, err=True))
    typer.echo(f"corrupted {len(report.written)} clips -> {report.manifest}")
    if report.noise_unreadable:
        typer.echo(f"warning: {len(report.noise_unreadable)} noise files unreadable", err=True)
    if report.failures:
        for failure in report.failures:
            typer.echo(f"error: {failure.clip_id}: {failure.reason}", err=True)
        raise typer.Exit(code=1)
