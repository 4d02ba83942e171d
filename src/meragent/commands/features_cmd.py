"""``meragent features``: fill the feature cache (MERTools layout) for a manifest, list it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from meragent.commands.choices import Device, Precision, SubtitleLanguage
from meragent.commands.errors import friendly_errors
from meragent.commands.options import ProfileOption
from meragent.config import load_settings

if TYPE_CHECKING:
    from meragent.tools.extract import ExtractReport
    from meragent.tools.feature_cache import FolderInfo

app = typer.Typer(help="Extract and cache per-clip embeddings.", no_args_is_help=True)

EncoderOption = Annotated[
    str,
    typer.Option(
        help="acoustic|visual|lexical (the profile's model), prosody|fer|minilm, "
        "or KIND:MODEL with KIND hubert|wav2vec2|clip|hf|minilm."
    ),
]
SubtitleLanguageOption = Annotated[
    SubtitleLanguage | None,
    typer.Option(
        help="Text encoders: read the 'chinese' (zh) or 'english' (en) transcript column "
        "(MER transcripts have both; default: the first subtitle column, Chinese for MER)."
    ),
]
PrecisionOption = Annotated[
    Precision | None,
    typer.Option(
        help="auto|fp32|bf16 for HuBERT/wav2vec2, CLIP and HF text encoders (default: the "
        "settings'; auto = bf16 where the CPU/GPU has it). bf16 is recorded in the folder."
    ),
]


@app.command("extract")
@friendly_errors
def extract(
    source: Annotated[
        Path, typer.Argument(help="Manifest file or folder (MER layouts, CSV/JSONL, videos).")
    ],
    encoder: EncoderOption,
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per forward pass.")] = 16,
    layers: Annotated[
        int | None,
        typer.Option(min=1, help="Sum of the last N hidden layers (default 4, MERTools)."),
    ] = None,
    feature_name: Annotated[
        str | None,
        typer.Option(help="Cache folder name (default: MERTools-style <model>-UTT)."),
    ] = None,
    subtitle_language: SubtitleLanguageOption = None,
    device: Annotated[
        Device | None, typer.Option(help="cpu, cuda or auto (default: the settings' device).")
    ] = None,
    precision: PrecisionOption = None,
    profile: ProfileOption = None,
    home: Annotated[
        Path | None, typer.Option(help="meragent home (features go to HOME/features).")
    ] = None,
) -> None:
    """Embed every clip of SOURCE with ENCODER; a vector cached from the same file is reused."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from meragent.tools.extract import extract_features

    settings = load_settings(profile=profile, home=home, precision=precision)
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
            feature_name=feature_name,
            subtitle_language=subtitle_language,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    _print_report(report)


def _print_report(report: ExtractReport) -> None:
    """The summary on stdout, the first failures on stderr; exit 1 when any clip has no vector."""
    from meragent.tools.extract import dumps_summary

    typer.echo(dumps_summary(report))
    for failure in report.failures[:20]:
        typer.echo(f"failed: {failure.clip_id} ({failure.stage}): {failure.reason}", err=True)
    for error in report.manifest_errors[:20]:
        typer.echo(f"skipped row: {error}", err=True)
    if report.failures or report.manifest_errors:
        raise typer.Exit(code=1)  # finished, but some clips or rows have no vector


@app.command("check")
@friendly_errors
def check(
    features_dir: Annotated[
        Path | None,
        typer.Argument(help="Feature folder root (default: the settings' HOME/features)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of lines.")] = False,
    profile: ProfileOption = None,
    home: Annotated[Path | None, typer.Option(help="meragent home (HOME/features).")] = None,
) -> None:
    """List each feature folder: vectors, dims, and what produced it (or that nothing says)."""
    import json

    from meragent.tools.feature_cache import FeatureCache

    if features_dir is not None:
        root = features_dir
    else:
        root = load_settings(profile=profile, home=home).features_dir
    if not root.is_dir():
        raise FileNotFoundError(2, "no such folder", str(root))
    cache = FeatureCache(root)
    infos = [cache.describe(name) for name in cache.encoders()]
    if as_json:
        typer.echo(json.dumps([_folder_summary(info) for info in infos], indent=2))
    else:
        typer.echo(f"{len(infos)} feature folder(s) in {root}")
        for info in infos:
            typer.echo(_folder_line(info))
    if any(info.unreadable or len(info.dims) > 1 for info in infos):
        raise typer.Exit(code=1)  # some vectors cannot be used as they are


def _folder_summary(info: FolderInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "vectors": info.vectors,
        "dims": info.dims,
        "provenance": info.provenance,
        "model": info.recipe.model if info.recipe else None,
        "recipe": dict(info.recipe.settings) if info.recipe else None,
        "with_source": info.with_source,
        "unreadable": info.unreadable,
    }


def _folder_line(info: FolderInfo) -> str:
    dims = "/".join(str(dim) for dim in info.dims) or "-"
    text = f"{info.name}: {info.vectors} vectors, dim {dims}, "
    if info.recipe is not None:
        text += f"meragent ({info.with_source} tied to their source), {info.recipe.describe()}"
    elif info.provenance == "plain":
        text += "plain MERTools folder (no provenance: vectors are read as they are)"
    else:
        text += "empty"
    if len(info.dims) > 1:
        text += "; MIXED dims"
    if info.unreadable:
        text += f"; {len(info.unreadable)} unreadable: {', '.join(info.unreadable[:5])}"
    return text
