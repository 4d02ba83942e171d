"""``meragent eval``: MER metrics on CSV files (six-class, open-set, emotion wheel) and the
calibration of the offline synonym grouper against the organisers' GPT grouping.

Exit codes: 0 every ground-truth clip has a prediction, 1 scored but some ground-truth clips had
no prediction (scored as wrong/empty, counted as ``missing predictions``), 2 unusable input
(a bad row is reported with its line and nothing is scored) or options.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meragent.commands.choices import Grouping, Parse, Scope
from meragent.commands.errors import fail, friendly_errors
from meragent.commands.options import ProfileOption

if TYPE_CHECKING:
    from meragent.config import Settings
    from meragent.eval.grouping import Grouper

app = typer.Typer(
    help="Score predictions with the official MER metrics; calibrate synonym grouping.",
    no_args_is_help=True,
)

#: Files ``calibrate-grouping --data DIR`` expects (the layout of ../shared/data/ov332).
OV_LABELS_FILE = "openset_labels.csv"
GPT_GROUPS_FILE = "gpt_synonym_groups.json"
BUNDLED_ENCODER = "bundled:minilm"


GtOption = Annotated[Path, typer.Option("--gt", help="Ground-truth CSV.")]
PredOption = Annotated[Path, typer.Option("--pred", help="Prediction CSV.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ParseOption = Annotated[
    Parse,
    typer.Option(
        "--parse",
        help="List-string parsing: 'proper' (Python/JSON literal) or 'mertools' (the organisers' "
        "scorer, which splits on every quote, to match leaderboard numbers).",
    ),
]
EncoderOption = Annotated[
    str | None,
    typer.Option(
        "--encoder",
        help="Sentence encoder for the embedding grouper: 'bundled:minilm', an HF id or a path "
        "(default: the profile grouper's model, else bundled:minilm).",
    ),
]


ScopeOption = Annotated[
    Scope | None,
    typer.Option(
        "--scope",
        help="Embedding grouping per sample (like the GPT grouping) or over all labels at once "
        "(default: the profile grouper's, else sample).",
    ),
]
WordFormsOption = Annotated[
    Path | None,
    typer.Option(
        "--word-forms",
        help="Word-forms CSV (name,format) for the morphology pass, e.g. emotion_wheel/"
        "word_forms.csv.",
    ),
]


@app.command("six")
@friendly_errors
def six(
    gt: GtOption,
    pred: PredOption,
    as_json: JsonOption = False,
    report: Annotated[
        Path | None,
        typer.Option(
            "--report", help="Folder for a confusion-matrix PNG, per-class bars and summary.md."
        ),
    ] = None,
) -> None:
    """Accuracy, WAF, per-class scores (+ valence MSE and MER2023 score) of name,discrete CSVs."""
    from meragent.eval.files import score_six_files
    from meragent.eval.report import six_table, write_six_report

    result = score_six_files(gt, pred)
    written = write_six_report(result, report) if report is not None else []
    typer.echo(result.model_dump_json(indent=2) if as_json else six_table(result))
    for path in written:
        typer.echo(f"wrote {path}", err=True)
    _exit_on_missing(result.n_missing_predictions)


@app.command("ov")
@friendly_errors
def ov(
    gt: GtOption,
    pred: PredOption,
    grouping: Annotated[
        Grouping | None,
        typer.Option(help="Synonym grouping (default: the profile's grouper role)."),
    ] = None,
    groups: Annotated[
        Path | None,
        typer.Option(
            "--groups",
            help="JSON file of per-sample synonym groups (sample -> list of label lists), for "
            "--grouping cached.",
        ),
    ] = None,
    parse: ParseOption = Parse.proper,
    tau: Annotated[
        float | None,
        typer.Option(min=-1.0, max=1.0, help="Cosine threshold of the embedding grouper."),
    ] = None,
    encoder: EncoderOption = None,
    word_forms: WordFormsOption = None,
    scope: ScopeOption = None,
    wheel_dir: Annotated[
        Path | None,
        typer.Option("--wheel-dir", help="Emotion-wheel folder for --grouping wheel."),
    ] = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """MER-OV set accuracy / recall / average of name,openset CSVs under a synonym grouping.

    Without --grouping (or with the profile's own) the profile grouper's options (tau, scope,
    encoder) apply, as in a batch's metrics.json.
    """
    from meragent.config import load_settings
    from meragent.eval.files import score_ov_files
    from meragent.eval.report import ov_table

    settings = load_settings(profile=profile)
    chosen = grouping or _profile_grouping(settings)
    if chosen is Grouping.wheel:
        if wheel_dir is None:
            raise fail("--grouping wheel needs --wheel-dir")
        _print_wheel(gt, pred, wheel_dir, parse, as_json)
        return
    grouper = _build_grouper(chosen, settings, groups, tau, encoder, word_forms, scope)
    result = score_ov_files(gt, pred, grouper, parse=parse.value)
    typer.echo(result.model_dump_json(indent=2) if as_json else ov_table(result))
    _report_grouper_problems(grouper)
    _exit_on_missing(result.n_missing_predictions)


@app.command("wheel")
@friendly_errors
def wheel(
    gt: GtOption,
    pred: PredOption,
    wheel_dir: Annotated[
        Path,
        typer.Option(
            "--wheel-dir",
            help="Folder with wheel1..5.csv, synonyms.csv and word_forms.csv (MER2025 layout).",
        ),
    ],
    parse: ParseOption = Parse.proper,
    as_json: JsonOption = False,
) -> None:
    """MER2025 emotion-wheel F-scores (level 1 and 2, five wheels) of name,openset CSVs."""
    _print_wheel(gt, pred, wheel_dir, parse, as_json)


@app.command("calibrate-grouping")
@friendly_errors
def calibrate_grouping(
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help=f"Folder with {OV_LABELS_FILE} and {GPT_GROUPS_FILE} (e.g. shared/data/ov332).",
        ),
    ],
    word_forms: WordFormsOption = None,
    encoder: EncoderOption = BUNDLED_ENCODER,
    scope: ScopeOption = Scope.sample,
    pred: Annotated[
        Path | None,
        typer.Option(
            "--pred",
            help="Prediction CSV for the OV comparison (default: the grouped labels beyond the "
            "ground truth).",
        ),
    ] = None,
    tau_min: Annotated[float, typer.Option(help="Smallest threshold tried.")] = 0.30,
    tau_max: Annotated[float, typer.Option(help="Largest threshold tried.")] = 0.90,
    tau_step: Annotated[float, typer.Option(min=0.001, help="Threshold step.")] = 0.01,
    out: Annotated[
        Path | None,
        typer.Option(
            help="JSON report path (default: <home>/runs/eval/grouping_calibration.json)."
        ),
    ] = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """Fit the embedding grouper's tau to agree best with the cached GPT grouping."""
    from meragent.config import load_settings
    from meragent.eval.calibrate import calibrate_embedding_grouping
    from meragent.eval.files import read_openset_csv
    from meragent.eval.grouping import read_groups_json
    from meragent.eval.report import calibration_table
    from meragent.tools.sentence_encoder import load_sentence_encoder

    if tau_min > tau_max:
        raise fail("--tau-min must not exceed --tau-max")
    settings = load_settings(profile=profile)
    taus = [round(t, 6) for t in _frange(tau_min, tau_max, tau_step)]
    report = calibrate_embedding_grouping(
        read_openset_csv(data / OV_LABELS_FILE),
        read_groups_json(data / GPT_GROUPS_FILE),
        load_sentence_encoder(encoder or BUNDLED_ENCODER, device="cpu"),
        pred=read_openset_csv(pred) if pred is not None else None,
        word_forms=word_forms,
        taus=taus,
        scope=(scope or Scope.sample).value,
        encoder_id=encoder or BUNDLED_ENCODER,
    )
    target = out or settings.runs_dir / "eval" / "grouping_calibration.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(report.model_dump_json(indent=2), encoding="utf-8")
    typer.echo(report.model_dump_json(indent=2) if as_json else calibration_table(report))
    typer.echo(f"wrote {target}", err=True)


def _frange(start: float, stop: float, step: float) -> list[float]:
    count = round((stop - start) / step) + 1
    return [start + i * step for i in range(count) if start + i * step <= stop + 1e-9]


def _print_wheel(gt: Path, pred: Path, wheel_dir: Path, parse: Parse, as_json: bool) -> None:
    from meragent.eval.files import score_wheel_files
    from meragent.eval.report import wheel_table

    result = score_wheel_files(gt, pred, wheel_dir, parse=parse.value)
    typer.echo(result.model_dump_json(indent=2) if as_json else wheel_table(result))
    _exit_on_missing(result.n_missing_predictions)


def _exit_on_missing(n_missing: int) -> None:
    """Exit 1 when ground-truth clips had no prediction (scored, but not everything was there)."""
    if n_missing:
        typer.echo(
            f"warning: {n_missing} ground-truth clip(s) have no prediction (scored as wrong)",
            err=True,
        )
        raise typer.Exit(code=1)


def _profile_grouping(settings: Settings) -> Grouping:
    backend = settings.role("grouper").backend
    try:
        return Grouping(backend)
    except ValueError:
        known = ", ".join(g.value for g in Grouping)
        message = f"profile grouper {backend!r} is not a grouping (pass --grouping {known})"
        raise fail(message) from None


def _build_grouper(
    grouping: Grouping,
    settings: Settings,
    groups: Path | None,
    tau: float | None,
    encoder: str | None,
    word_forms: Path | None,
    scope: Scope | None,
) -> Grouper:
    from meragent.eval.grouping import get_grouper
    from meragent.graphs.runtime import grouper_options

    role = settings.role("grouper")
    # The profile's own grouping takes the profile's options (as the batch's metrics.json does).
    defaults = grouper_options(role) if role.backend == grouping.value else {}
    groups = groups or (Path(str(defaults["path"])) if defaults.get("path") else None)
    tau = tau if tau is not None else defaults.get("tau")
    encoder = encoder or defaults.get("encoder") or BUNDLED_ENCODER
    word_forms = word_forms or defaults.get("word_forms")
    scope = scope or Scope(defaults.get("scope", Scope.sample.value))
    if grouping is Grouping.cached:
        if groups is None:
            raise fail("--grouping cached needs --groups FILE")
        return get_grouper("cached", path=groups)
    if grouping is Grouping.embedding:
        from meragent.eval.embedding_grouper import DEFAULT_TAU
        from meragent.tools.sentence_encoder import load_sentence_encoder

        return get_grouper(
            "embedding",
            encoder=load_sentence_encoder(encoder, device="cpu"),
            tau=DEFAULT_TAU if tau is None else tau,
            word_forms=word_forms,
            scope=scope.value,
        )
    if grouping is Grouping.llm:
        from meragent.agents.chat import make_chat_model

        chat_model = make_chat_model(
            settings.role("reasoning_llm"), settings, role_name="reasoning_llm"
        )
        return get_grouper(
            "llm", chat_model=chat_model, cache_dir=settings.cache_dir / "llm_groups"
        )
    return get_grouper("identity")


def _report_grouper_problems(grouper: Grouper) -> None:
    failures = getattr(grouper, "failures", None)
    if failures:
        typer.echo(
            f"warning: {len(failures)} sample(s) left ungrouped (first: {failures[0]})", err=True
        )
    missing = getattr(grouper, "missing_samples", None)
    if missing:
        typer.echo(
            f"warning: {len(missing)} sample(s) not in the groups file (scored ungrouped)",
            err=True,
        )
