"""``meragent fusion``: train the six-class fusion head, predict with it, pseudo-label a pool.

Fusion reads labels and cached features only, so sources are loaded with ``media="optional"``:
a MERTools folder holding ``label-6way.npz`` and no videos, or a CSV with ``name`` + labels, is
a full training set. Exit codes: 0 all ok; 1 the command finished but some rows were unusable or
some clips lacked features (the last line says how many); 2 usage or configuration error.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meragent.commands.errors import friendly_errors
from meragent.commands.fusion_options import (
    AugmentFeaturesOpt,
    AugmentOpt,
    DeviceOpt,
    EncodersOpt,
    FeaturesOpt,
    ProfileOpt,
    SourceArg,
    TrainingOptions,
)
from meragent.commands.options import DataRootOption, SplitOption, option_groups
from meragent.errors import ConfigError

if TYPE_CHECKING:
    from meragent.finetune.fusion_train import FusionTrainConfig, FusionTrainResult
    from meragent.finetune.pseudo_label import PseudoLabelResult
    from meragent.schema import Clip
    from meragent.tools.feature_cache import FeatureCache

app = typer.Typer(
    help="Attention-fusion classifier for MER-SEMI / MER-NOISE (k-fold search, pseudo-labels).",
    no_args_is_help=True,
)


def _floats(text: str, what: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--{what} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise ConfigError(f"--{what}: no value given")
    return values


def _ints(text: str, what: str) -> list[int]:
    values = _floats(text, what)
    if any(not v.is_integer() for v in values):
        raise ConfigError(f"--{what} {text!r}: expected whole numbers")
    return [int(v) for v in values]


@dataclass
class _Problems:
    """What a fusion command could not use; any of it makes the exit code 1."""

    unusable_rows: int = 0
    lacking_features: list[str] = field(default_factory=list)

    def finish(self) -> None:
        """Print how many rows/clips were affected and exit 1, or return when there were none."""
        if not self.unusable_rows and not self.lacking_features:
            return
        typer.echo(
            f"finished with problems: {self.unusable_rows} unusable rows, "
            f"{len(self.lacking_features)} clips lacking features (see the lines above)"
        )
        raise typer.Exit(code=1)


def _load_clips(
    source: Path, split: str | None, data_root: Path | None, problems: _Problems
) -> list[Clip]:
    """Clips of a source (media not needed); bad rows are reported on stderr and counted."""
    from meragent.data.manifest import load_manifest

    loaded = load_manifest(source, data_root=data_root, split=split, media="optional")
    if loaded.errors:
        typer.echo(f"warning: {len(loaded.errors)} unusable rows in {source}:", err=True)
        for error in loaded.errors[:10]:
            typer.echo(f"  {error}", err=True)
        if len(loaded.errors) > 10:
            typer.echo(f"  … and {len(loaded.errors) - 10} more", err=True)
    problems.unusable_rows += len(loaded.errors)
    return list(loaded.clips)


def _feature_cache(features: Path | None, profile: str | None) -> FeatureCache:
    from meragent.config import load_settings
    from meragent.tools.feature_cache import FeatureCache

    root = features if features is not None else load_settings(profile=profile).features_dir
    return FeatureCache(root)


def _train_config(options: TrainingOptions, profile: str | None) -> FusionTrainConfig:
    """The run's FusionTrainConfig: the options (but the feature cache) under their own names,
    the comma-separated grids parsed, device and precision resolved against the settings."""
    from pydantic import ValidationError

    from meragent.config import announce_precision, load_settings
    from meragent.finetune.fusion_train import FusionTrainConfig

    settings = load_settings(profile=profile, device=options.device, precision=options.precision)
    resolved = announce_precision(settings.precision, settings.resolved_device())
    if options.valence not in ("auto", "on", "off"):
        raise ConfigError(f"--valence must be auto, on or off, got {options.valence!r}")
    fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
    del fields["features"]  # where the vectors are read from, not how the model trains
    fields.update(
        hidden=_ints(options.hidden, "hidden"),
        lr=_floats(options.lr, "lr"),
        dropout=_floats(options.dropout, "dropout"),
        device=options.device or settings.device,
        precision=resolved,
    )
    try:
        return FusionTrainConfig(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid fusion setting {where}: {first['msg']}") from None


def _augment_cache(augment: str | None, augment_features: Path | None) -> FeatureCache | None:
    from meragent.tools.feature_cache import FeatureCache

    if augment is None:
        if augment_features is not None:
            raise ConfigError("--augment-features needs --augment corrupt")
        return None
    if augment != "corrupt":
        raise ConfigError(f"--augment {augment!r}: the only augmentation is 'corrupt'")
    if augment_features is None or not augment_features.is_dir():
        raise ConfigError(
            "--augment corrupt needs --augment-features DIR: the feature cache of the corrupted "
            "copies (run `meragent data corrupt`, then extract features into DIR)"
        )
    return FeatureCache(augment_features)


def _print_training(result: FusionTrainResult, out: Path) -> None:
    ranked = sorted(result.search.combos, key=lambda c: -c.score_mean)
    typer.echo(f"{len(ranked)} combinations × {result.config.folds} folds (best first):")
    for combo in ranked[:10]:
        typer.echo("  " + combo.summary())
    best = result.search.best
    typer.echo(f"best: {best.summary()} in {result.search.elapsed_s:.1f}s; model written to {out}")


@app.command("train")
@friendly_errors
@option_groups
def train(
    source: SourceArg,
    encoders: EncodersOpt,
    out: Annotated[Path, typer.Option(help="Directory to write the trained model into.")],
    augment: AugmentOpt = None,
    augment_features: AugmentFeaturesOpt = None,
    *,
    training: TrainingOptions,
    split: SplitOption = None,
    data_root: DataRootOption = None,
    profile: ProfileOpt = None,
) -> None:
    """k-fold random search of the fusion head on cached features; save the best model."""
    from meragent.finetune.fusion_data import parse_branches
    from meragent.finetune.fusion_train import save_fusion_model, train_fusion

    config = _train_config(training, profile)
    branches = parse_branches(encoders)
    augment_cache = _augment_cache(augment, augment_features)
    problems = _Problems()
    clips = _load_clips(source, split, data_root, problems)
    cache = _feature_cache(training.features, profile)
    result = train_fusion(
        clips,
        cache,
        branches,
        config,
        augment_cache=augment_cache,
        progress=lambda message: typer.echo(message, err=True),
    )
    save_fusion_model(result, out)
    _print_training(result, out)
    problems.lacking_features = result.report.lacking_features()
    problems.finish()


@app.command("predict")
@friendly_errors
def predict(
    source: Annotated[Path, typer.Argument(help="Clips to predict (labels optional).")],
    model: Annotated[Path, typer.Option("--model", help="A trained fusion-model directory.")],
    out: Annotated[Path, typer.Option(help="Submission CSV to write (name,discrete[,valence]).")],
    features: FeaturesOpt = None,
    device: DeviceOpt = None,
    split: SplitOption = None,
    data_root: DataRootOption = None,
    profile: ProfileOpt = None,
) -> None:
    """Predict every clip of SOURCE from cached features; write MER's submission CSV."""
    from meragent.config import load_settings, resolve_device
    from meragent.finetune.fusion_predict import predict_clips, write_submission
    from meragent.tools.fusion_model import load_fusion_model

    predictor = load_fusion_model(
        model, device=resolve_device(device or load_settings(profile=profile).device)
    )
    problems = _Problems()
    clips = _load_clips(source, split, data_root, problems)
    table = predict_clips(clips, _feature_cache(features, profile), predictor)
    write_submission(table, out)
    typer.echo(f"predicted {len(table.clip_ids)} clips -> {out}")
    if table.skipped:
        from meragent.finetune.fusion_data import short_list

        typer.echo(
            f"skipped {len(table.skipped)} clips with no features at all: "
            f"{short_list(table.skipped)}",
            err=True,
        )
    for name, missing in table.missing.items():
        if missing:
            typer.echo(f"{name}: features missing for {len(missing)} clips (masked)", err=True)
    _print_scores(clips, table)
    problems.lacking_features = table.lacking_features()
    problems.finish()


def _print_scores(clips: list[Clip], table: object) -> None:
    """When the clips carry labels, print WAF / accuracy of the predictions."""
    from meragent.eval.six import six_class_metrics
    from meragent.finetune.fusion_predict import PredictionTable

    assert isinstance(table, PredictionTable)
    truth = {c.id: c.discrete for c in clips if c.discrete is not None}
    predicted = dict(zip(table.clip_ids, table.discrete(), strict=True))
    names = [name for name in truth if name in predicted]
    if not names:
        return
    valence_true = valence_pred = None
    if table.valence is not None:
        by_clip = {c.id: c.valence for c in clips}
        predicted_valence = dict(zip(table.clip_ids, table.valence.tolist(), strict=True))
        valence_true = [by_clip[n] for n in names]
        valence_pred = [predicted_valence[n] for n in names]
    report = six_class_metrics(
        [truth[n] for n in names],
        [predicted[n] for n in names],
        valence_true=valence_true,
        valence_pred=valence_pred,
    )
    line = (
        f"on {len(names)} labelled clips: "
        f"WAF {100 * report.waf:.2f} ACC {100 * report.accuracy:.2f}"
    )
    if report.mse is not None and report.mer2023_score is not None:
        line += (
            f" valence MSE {report.mse:.3f} ({report.n_valence} clips) "
            f"MER2023 score {report.mer2023_score:.4f}"
        )
    typer.echo(line)


@app.command("pseudo-label")
@friendly_errors
@option_groups
def pseudo_label(
    source: SourceArg,
    unlabeled: Annotated[Path, typer.Option(help="The unlabelled pool (a manifest or folder).")],
    encoders: EncodersOpt,
    out: Annotated[
        Path, typer.Option(help="Directory for the final model, pseudo_labels.csv, rounds.json.")
    ],
    rounds: Annotated[int, typer.Option(min=1, help="Pseudo-labelling rounds.")] = 1,
    eta: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.999,
            help="Keep, per class, clips at or above this quantile of confidence.",
        ),
    ] = 0.8,
    threshold: Annotated[
        list[str] | None,
        typer.Option(help="Fixed confidence threshold for a class, CLASS=VALUE (repeatable)."),
    ] = None,
    test: Annotated[
        Path | None,
        typer.Option(help="Test clips: never pseudo-labelled, even if they are in the pool."),
    ] = None,
    *,
    training: TrainingOptions,
    data_root: DataRootOption = None,
    profile: ProfileOpt = None,
) -> None:
    """MER-SEMI: train, pseudo-label the confident pool clips per class, retrain (R rounds)."""
    from meragent.finetune.fusion_data import parse_branches
    from meragent.finetune.pseudo_label import PseudoLabelConfig, pseudo_label_training

    train_config = _train_config(training, profile)
    config = PseudoLabelConfig(
        rounds=rounds, eta=eta, thresholds=_thresholds(threshold or []), train=train_config
    )
    branches = parse_branches(encoders)
    problems = _Problems()
    labelled = _load_clips(source, None, data_root, problems)
    pool = _load_clips(unlabeled, None, data_root, problems)
    test_clips = _load_clips(test, None, data_root, problems) if test is not None else []
    test_ids = [c.id for c in test_clips]
    result = pseudo_label_training(
        labelled,
        pool,
        _feature_cache(training.features, profile),
        branches,
        config,
        test_ids=test_ids,
        progress=lambda message: typer.echo(message, err=True),
    )
    _save_pseudo_labelling(result, out)
    if result.no_features:
        typer.echo(f"pool: {len(result.no_features)} clips had no features at all", err=True)
    lacking = [*result.final.report.lacking_features(), *result.no_features]
    problems.lacking_features = list(dict.fromkeys(lacking))
    problems.finish()


def _save_pseudo_labelling(result: PseudoLabelResult, out: Path) -> None:
    """Write the final model, pseudo_labels.csv and rounds.json into ``out``; print the rounds."""
    from meragent.finetune.fusion_train import save_fusion_model

    out.mkdir(parents=True, exist_ok=True)
    save_fusion_model(result.final, out / "model")
    _write_pseudo_labels(result.labels, out / "pseudo_labels.csv")
    (out / "rounds.json").write_text(
        json.dumps([r.model_dump() for r in result.rounds], indent=2), encoding="utf-8"
    )
    for report in result.rounds:
        added = ", ".join(f"{k} {v}" for k, v in report.added.items())
        typer.echo(f"round {report.round}: added {sum(report.added.values())} ({added})")
    _print_training(result.final, out / "model")


def _thresholds(items: list[str]) -> dict[str, float]:
    from meragent.schema import normalize_emotion

    thresholds: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            thresholds[normalize_emotion(name)] = float(value)
        except ValueError:
            raise ConfigError(
                f"--threshold {item!r}: expected CLASS=VALUE, e.g. happy=0.9"
            ) from None
    return thresholds


def _write_pseudo_labels(labels: Mapping[str, object], path: Path) -> None:
    import csv

    from meragent.finetune.pseudo_label import PseudoLabel

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["name", "discrete", "confidence", "round"])
        for name, label in labels.items():
            assert isinstance(label, PseudoLabel)
            writer.writerow([name, label.label, f"{label.confidence:.4f}", label.round])
