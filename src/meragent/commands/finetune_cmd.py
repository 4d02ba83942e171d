"""``meragent finetune``: LoRA tuning of the OV labeler (k-fold, scored next to baselines),
merging an adapter into its base, and exporting the dataset for other trainers."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from meragent.commands.choices import ExportFormat, Grouper, Language, Modality, Precision
from meragent.commands.errors import friendly_errors
from meragent.commands.finetune_options import (
    AlphaOption,
    BatchSizeOption,
    DataOption,
    DeviceOption,
    DropoutOption,
    DtypeOption,
    EncoderOption,
    EpochsOption,
    EvalBatchSizeOption,
    EvalLimitOption,
    FoldOption,
    FoldsOption,
    FormatOption,
    GradAccumOption,
    GrouperOption,
    GrouperProfileOption,
    LanguageOption,
    LimitOption,
    LoraBaseOption,
    LoraOutOption,
    LrOption,
    ManifestOption,
    MaxLengthOption,
    MaxNewTokensOption,
    MaxStepsOption,
    ModalityOption,
    NumFramesOption,
    PrecisionOption,
    ProgressOption,
    RankOption,
    ResultsOption,
    SamplesOption,
    SeedOption,
    TemperatureOption,
    ThreadsOption,
    WheelDirOption,
    WordFormsOption,
    ZeroShotOption,
)

if TYPE_CHECKING:
    from meragent.finetune.lora_config import LoraRunConfig

app = typer.Typer(
    help="LoRA instruction tuning of the labeler; adapter merge; dataset export.",
    no_args_is_help=True,
)

DEFAULT_BASE = "bundled:smollm2-135m"


def _default_out(name: str) -> Path:
    from meragent.config import load_settings

    return load_settings().runs_dir / name


#: ``lora`` options that become the LoRA hyper-parameters (option -> LoraHyperParams field);
#: ``--seed`` is also the run's seed (the fold split), every other one only a hyper-parameter.
_HYPER_FIELDS = {
    "rank": "r",
    "alpha": "alpha",
    "dropout": "dropout",
    "learning_rate": "learning_rate",
    "epochs": "epochs",
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "seed": "seed",
}
#: ``lora`` options that LoraRunConfig names otherwise.
_RENAMED = {"data": "data_dir", "out": "out_dir"}


def _run_config(options: Mapping[str, Any]) -> LoraRunConfig:
    """The run's config from the ``lora`` command's options (each choice as its plain value)."""
    from meragent.config import announce_precision, load_settings, resolve_device
    from meragent.finetune.lora_run import make_run_config

    values = {
        name: str(value) if isinstance(value, StrEnum) else value
        for name, value in options.items()
        if name != "results"  # where to copy results.json, not part of the run
    }
    hyper = {field: values[option] for option, field in _HYPER_FIELDS.items()}
    fields = {
        _RENAMED.get(name, name): value
        for name, value in values.items()
        if name == "seed" or name not in _HYPER_FIELDS
    }
    precision = values["precision"] or load_settings(profile=values["profile"]).precision
    device = resolve_device(values["device"])
    fields.update(
        out_dir=values["out"] or _default_out("finetune-lora"),
        hyper=hyper,
        device=device,
        precision=announce_precision(precision, device),
    )
    return make_run_config(**fields)


@app.command("lora")
@friendly_errors
def lora(
    data: DataOption,
    base: LoraBaseOption = DEFAULT_BASE,
    out: LoraOutOption = None,
    modality: ModalityOption = Modality.text,
    folds: FoldsOption = 5,
    fold: FoldOption = None,
    epochs: EpochsOption = 2.0,
    max_steps: MaxStepsOption = None,
    limit: LimitOption = None,
    eval_limit: EvalLimitOption = None,
    language: LanguageOption = Language.english,
    max_length: MaxLengthOption = 512,
    max_new_tokens: MaxNewTokensOption = 48,
    learning_rate: LrOption = 2e-4,
    batch_size: BatchSizeOption = 1,
    grad_accum: GradAccumOption = 8,
    rank: RankOption = 16,
    alpha: AlphaOption = 32,
    dropout: DropoutOption = 0.05,
    eval_batch_size: EvalBatchSizeOption = 4,
    word_forms: WordFormsOption = None,
    encoder: EncoderOption = "bundled:minilm",
    grouper: GrouperOption = Grouper.embedding,
    profile: GrouperProfileOption = None,
    zero_shot: ZeroShotOption = True,
    manifest: ManifestOption = None,
    num_frames: NumFramesOption = 4,
    results: ResultsOption = None,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    threads: ThreadsOption = None,
    precision: PrecisionOption = Precision.auto,
    samples: SamplesOption = 1,
    temperature: TemperatureOption = 0.0,
    wheel_dir: WheelDirOption = None,
    progress: ProgressOption = True,
) -> None:
    """Train LoRA adapters on k folds and score them against the zero-shot base and a lexicon."""
    # The options by name: the config takes each under its own name (see _run_config).
    config = _run_config(locals())
    from meragent.finetune.lora_run import run_lora_cv

    outcome = run_lora_cv(config, report=lambda line: typer.echo(line, err=True))
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(config.out_dir / "results.json", results)
    typer.echo(json.dumps(outcome["summary"], indent=2))


@app.command("merge")
@friendly_errors
def merge(
    adapter: Annotated[Path, typer.Option("--adapter", help="Folder of a peft LoRA adapter.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the merged model.")],
    base: Annotated[
        str | None,
        typer.Option("--base", help="Base model (default: the one the adapter records)."),
    ] = None,
    device: DeviceOption = "cpu",
    dtype: DtypeOption = "auto",
) -> None:
    """Merge a LoRA adapter into its base model and save a standalone checkpoint."""
    from meragent.finetune.lora_merge import merge_adapter

    path = merge_adapter(adapter, out, base=base, device=device, dtype=dtype)
    typer.echo(f"merged model written to {path}")


@app.command("export")
@friendly_errors
def export(
    data: DataOption,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    fmt: FormatOption = ExportFormat.sharegpt,
    language: LanguageOption = Language.english,
    folds: FoldsOption = 5,
    seed: SeedOption = 0,
) -> None:
    """Write the labeler dataset (all + per-fold splits) for LLaMA-Factory."""
    from meragent.finetune.ov_export import export_dataset

    paths = export_dataset(
        data, out, fmt=fmt.value, language=language.value, folds=folds, seed=seed
    )
    typer.echo(f"wrote {len(paths)} files to {out}")
