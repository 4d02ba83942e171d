"""Top-level pipeline commands: ``run`` (one clip), ``batch`` (a manifest), ``demo``.

Each command builds Settings, calls one function of ``meragent.graphs`` and prints the result;
the graph, models and stores are imported only when a command runs. Exit codes: 0 every clip
ok, 1 the command finished but a clip failed or was only answered in part (``degraded``) or the
source had unusable rows, 2 a usage or configuration error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from meragent.commands.choices import Executor, Precision, Track
from meragent.commands.errors import fail, friendly_errors, say
from meragent.config import load_settings
from meragent.secrets import scrub_data

if TYPE_CHECKING:
    from meragent.graphs.batch import BatchSummary

TRACK_HELP = "What to answer: ov (open-vocabulary labels), semi / noise (six-class), or all."
TrackOption = Annotated[Track, typer.Option(help=TRACK_HELP)]
PrecisionOption = Annotated[
    Precision | None,
    typer.Option(
        help="auto|fp32|bf16 for the encoders (default: the settings', MERAGENT_PRECISION or the "
        "profile's; auto = bf16 where the CPU/GPU has it). Recorded in the run."
    ),
]
ProfileOption = Annotated[
    str | None, typer.Option(help="Profile name (offline|small|full) or a TOML path.")
]


def _clip_payload(outcome: Any) -> dict[str, Any]:
    """The machine-readable answer of ``meragent run --json``."""
    output = outcome.output
    prediction = output.get("prediction")
    return {
        "clip": outcome.clip.id,
        "discrete": getattr(prediction, "discrete", None),
        "probs": getattr(prediction, "probs", None),
        "openset": getattr(prediction, "openset", []),
        "description": output.get("description"),
        "flags": getattr(prediction, "flags", []),
        "clues": [clue.model_dump(mode="json") for clue in output.get("clues", [])],
        "metrics": output.get("metrics"),
        "latency_s": round(outcome.latency_s, 3),
        "trace": {"run": outcome.run_id, "store": str(outcome.run_dir / "trace.sqlite")},
    }


def _print_clip(payload: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(show_header=False, box=None)
    table.add_row("clip", payload["clip"])
    table.add_row("six-class", str(payload["discrete"] or "—"))
    table.add_row("labels", ", ".join(payload["openset"]) or "—")
    table.add_row("description", payload["description"] or "—")
    for clue in payload["clues"]:
        state = clue["text"] if clue["available"] else f"unavailable ({clue.get('error')})"
        table.add_row(f"{clue['modality']} clue", f"[{clue['source']}] {state}")
    if payload["flags"]:
        table.add_row("flags", ", ".join(payload["flags"]))
    if payload["metrics"]:
        table.add_row("metrics", json.dumps(payload["metrics"]))
    console.print(table, markup=False)
    trace = payload["trace"]
    console.print(f"trace: meragent trace show {trace['run']} {payload['clip']}", markup=False)


def _print_summary(summary: BatchSummary) -> None:
    # clips/s is the progress bar's figure: clips processed over the time spent on clips.
    typer.echo(
        f"run {summary.run_name}: {summary.n_ok} ok, {summary.n_degraded} degraded, "
        f"{summary.n_failed} failed, {summary.n_skipped} already done, "
        f"{summary.n_row_errors} bad manifest rows ({summary.n_done} clips in "
        f"{summary.throughput.seconds:.2f} s: {summary.clips_per_s:.2f} clips/s; "
        f"{summary.elapsed_s:.1f} s in all)"
    )
    outputs = summary.outputs
    if outputs is not None:
        for path in (outputs.discrete, outputs.openset, outputs.parquet, outputs.errors):
            if path is not None:
                typer.echo(f"  {path}")
        if outputs.metrics is not None:
            typer.echo(f"  {outputs.metrics}")
    for role, usage in summary.usage.items():
        typer.echo(
            f"  {role}: {usage['calls']} calls, {usage['input_tokens']}+{usage['output_tokens']}"
            f" tokens, {usage['retries']} retries, ${usage['cost_usd']:.4f}"
        )
    for failure in summary.failures[:5]:
        say(f"  {failure.severity} {failure.clip_id} [{failure.stage}]: {failure.reason}")


def run_command(
    clip: Annotated[
        str,
        typer.Argument(
            help="A video/audio file, a one-clip manifest, or MANIFEST#CLIP_ID (or #ROW)."
        ),
    ],
    track: TrackOption = Track.all,
    profile: ProfileOption = None,
    precision: PrecisionOption = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
) -> None:
    """Answer one clip: the six-class emotion, open-vocabulary labels and the description."""
    from meragent.graphs.pipeline import run_one

    settings = load_settings(profile=profile, precision=precision)
    outcome = run_one(settings, clip, track=track)
    payload = scrub_data(_clip_payload(outcome))  # clue errors may quote a server's reply
    if as_json:
        typer.echo(json.dumps(payload, ensure_ascii=False, default=str))
    else:
        _print_clip(payload)
    if outcome.status == "degraded":
        say(f"degraded {outcome.clip.id} [media]: {outcome.degraded_reason}", err=True)
        raise typer.Exit(code=1)


SourceArgument = Annotated[
    Path | None,
    typer.Argument(
        help="A manifest (CSV/JSONL), a MER data folder or a video folder (with --resume: "
        "default the run's own)."
    ),
]
ConcurrencyOption = Annotated[
    int, typer.Option(help="Clips processed at the same time (threads).", min=1)
]
RunTrackOption = Annotated[
    Track | None,
    typer.Option(help=f"{TRACK_HELP} Default: the run's own track, or all for a new run."),
]
ResumeOption = Annotated[bool, typer.Option(help="Continue a run: skip clips it already answered.")]
AllowNewSourceOption = Annotated[
    bool,
    typer.Option(
        "--allow-new-source",
        help="With --resume: continue on a SOURCE other than the run's own (e.g. the same "
        "clips moved); without it that is refused, as it would mix two datasets.",
    ),
]
LimitOption = Annotated[
    int | None, typer.Option(help="Only the first N clips of the source.", min=1)
]
EncoderBatchOption = Annotated[
    int | None,
    typer.Option(
        help="Clips per encoder call (HuBERT, CLIP, text); default: local executor 8 on a "
        "GPU and 1 on CPU, Ray 16. Same answers as 1; larger batches use the hardware better.",
        min=1,
    ),
]
ProcessesOption = Annotated[
    int,
    typer.Option(
        help="Worker processes of the local executor, each running CONCURRENCY/N clips (at "
        "least 1) and loading its own models. More than 1 pays when the graph itself is the "
        "bottleneck (cached features, a fast LLM server): LangGraph runs on one core per process.",
        min=1,
    ),
]
ExecutorOption = Annotated[
    Executor,
    typer.Option(
        help="Where clips run: local (threads in this process) or ray (a Ray Data pipeline "
        "over a Ray cluster; needs meragent\\[ray])."
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster to join with --executor ray ('auto' or HOST:PORT); "
        "default: start a Ray on this machine."
    ),
]
GpusOption = Annotated[
    float,
    typer.Option(
        help="GPUs per encoder worker with --executor ray (fractions allowed); "
        "0 runs the encoders on CPU.",
        min=0.0,
    ),
]
LlmUrlOption = Annotated[
    list[str] | None,
    typer.Option(
        help="OpenAI-compatible server for the LLM roles with --executor ray (repeat it: "
        "clips are spread over the servers, e.g. one vLLM per GPU)."
    ),
]


def batch_command(
    run: Annotated[str, typer.Option("--run", help="Run name: outputs go to runs/NAME/.")],
    source: SourceArgument = None,
    concurrency: ConcurrencyOption = 1,
    track: RunTrackOption = None,
    resume: ResumeOption = False,
    allow_new_source: AllowNewSourceOption = False,
    profile: ProfileOption = None,
    precision: PrecisionOption = None,
    limit: LimitOption = None,
    encoder_batch: EncoderBatchOption = None,
    processes: ProcessesOption = 1,
    executor: ExecutorOption = Executor.local,
    address: AddressOption = None,
    gpus_per_worker: GpusOption = 0.0,
    llm_url: LlmUrlOption = None,
) -> None:
    """Run every clip of SOURCE; write MER submission CSVs, results.parquet and errors.csv.

    Exit code 0 when every clip is ok, 1 when some clip failed or was degraded or some source
    row was unusable (errors.csv lists them), 2 for a usage or configuration error.
    """
    given = dict(locals())  # the options by name, before any other name is bound
    from meragent.graphs.batch import BatchOptions

    if source is None and not resume:
        raise fail("give the SOURCE to run (only --resume can take the run's own)")
    settings = load_settings(profile=profile, precision=precision)
    # Each option that is a BatchOptions field goes there under its own name.
    options = BatchOptions(
        **{name: given[name] for name in BatchOptions.model_fields if name in given}
    )
    ray = {"address": address, "gpus_per_worker": gpus_per_worker, "llm_urls": tuple(llm_url or ())}
    summary = _run_batch_on(executor, settings, source, run, options, ray)
    _print_summary(summary)
    if summary.exit_code:
        raise typer.Exit(code=summary.exit_code)


def _run_batch_on(
    executor: Executor, settings: Any, source: Path | None, run: str, options: Any,
    ray: dict[str, Any],
) -> BatchSummary:  # fmt: skip
    """The batch on the chosen executor (Ray options only with ``--executor ray``)."""
    if executor == "ray":
        if options.processes > 1:
            raise fail("--processes is for --executor local (Ray places its own workers)")
        from meragent.graphs.ray_executor import RayOptions, run_batch_ray

        batch_size = options.encoder_batch or RayOptions.encoder_batch_size
        ray_options = RayOptions(**ray, encoder_batch_size=batch_size)
        return run_batch_ray(settings, source, run, options, ray_options)
    if executor == "local":
        from meragent.graphs.batch import run_batch

        if ray["address"] is not None or ray["gpus_per_worker"] or ray["llm_urls"]:
            raise fail("--address, --gpus-per-worker and --llm-url need --executor ray")
        return run_batch(settings, source, run, options)
    raise fail(f"unknown --executor {executor!r} (choose local or ray)")


def demo_command(
    clips: Annotated[int, typer.Option(help="How many synthetic clips to run.", min=1)] = 2,
    profile: Annotated[
        str, typer.Option(help="Profile to run (the default needs no network and no GPU).")
    ] = "offline",
) -> None:
    """Make (or reuse) synthetic clips and run the full pipeline on them, offline."""
    from meragent.graphs.pipeline import run_demo

    settings = load_settings(profile=profile)
    typer.echo(f"demo clips: {settings.home / 'demo' / 'clips'} (models load first, ~1 min)")
    result = run_demo(settings, n_clips=clips)
    _print_summary(result.summary)
    _print_demo_answers(result)


def _print_demo_answers(result: Any) -> None:
    from rich.console import Console
    from rich.text import Text

    from meragent.graphs.trace import read_trace

    console = Console()
    with read_trace(result.summary.run_dir) as store:
        for record in store.results(result.summary.run_name):
            clip = (record.result or {}).get("clip") or {}
            line = Text(f"{record.clip_id}: ", style="bold")
            line.append(f"six-class {record.discrete or record.status}")
            line.append(f" (truth {clip.get('discrete') or '?'}), ")
            line.append(f"labels {', '.join(record.openset or []) or '—'}")
            console.print(line)
            text = " ".join((record.description or record.error or "").split())
            console.print(Text(f"  {text[:240]}{'…' if len(text) > 240 else ''}"))
    run = result.summary.run_name
    console.print(f"trace store: {result.summary.run_dir / 'trace.sqlite'}", markup=False)
    console.print(f"trace page:  {result.html}", markup=False)
    console.print(f"step by step: meragent trace show {run} CLIP", markup=False)


def register(app: typer.Typer) -> None:
    """Attach the pipeline commands to the root app."""
    app.command("run")(friendly_errors(run_command))
    app.command("batch")(friendly_errors(batch_command))
    app.command("demo")(friendly_errors(demo_command))
