"""``meragent finetune``: LoRA tuning of the OV labeler (k-fold, scored next to baselines),
merging an adapter into its base, and exporting the dataset for other trainers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import typer

from meragent.commands.choices import ExportFormat, Grouper, Language, Modality, Precision
from meragent.commands.errors import friendly_errors

app = typer.Typer(
    help="LoRA instruction tuning of the labeler; adapter merge; dataset export.",
    no_args_is_help=True,
)

DEFAULT_BASE = "bundled:smollm2-135m"


DataOption = Annotated[
    Path,
    typer.Option(
        "--data", help="Folder with descriptions.csv and openset_labels.csv (e.g. data/ov332)."
    ),
]
LanguageOption = Annotated[
    Language, typer.Option("--language", help="Description language(s) to use.")
]
FoldsOption = Annotated[int, typer.Option("--folds", help="Number of folds (split by name).")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed for the split and training.")]
DeviceOption = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
DtypeOption = Annotated[
    str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16.")
]


def _default_out(name: str) -> Path:
    from meragent.config import load_settings

    return load_settings().runs_dir / name


@app.command("lora")
@friendly_errors
def lora(
    data: DataOption,
    base: Annotated[
        str, typer.Option("--base", help="Base model: HF id, local folder or bundled:NAME.")
    ] = DEFAULT_BASE,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Output folder (default: <home>/runs/finetune-lora)."),
    ] = None,
    modality: Annotated[
        Modality, typer.Option("--modality", help="text: description -> labels; video.")
    ] = Modality.text,
    folds: FoldsOption = 5,
    fold: Annotated[
        int | None, typer.Option("--fold", help="Run only this fold (0-based); default all.")
    ] = None,
    epochs: Annotated[float, typer.Option("--epochs", help="Training epochs per fold.")] = 2.0,
    max_steps: Annotated[
        int | None, typer.Option("--max-steps", help="Stop after this many optimizer steps.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Use a seeded subset of N samples.")
    ] = None,
    eval_limit: Annotated[
        int | None, typer.Option("--eval-limit", help="Score at most N held-out samples/fold.")
    ] = None,
    language: LanguageOption = Language.english,
    max_length: Annotated[
        int, typer.Option("--max-length", help="Token budget of prompt + answer.")
    ] = 512,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Answer budget at evaluation.")
    ] = 48,
    learning_rate: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 2e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per micro-batch.")] = 1,
    grad_accum: Annotated[
        int, typer.Option("--grad-accum", help="Micro-batches per optimizer step.")
    ] = 8,
    rank: Annotated[int, typer.Option("--rank", help="LoRA rank r.")] = 16,
    alpha: Annotated[int, typer.Option("--alpha", help="LoRA alpha.")] = 32,
    dropout: Annotated[float, typer.Option("--dropout", help="LoRA dropout.")] = 0.05,
    eval_batch_size: Annotated[
        int, typer.Option("--eval-batch-size", help="Prompts per generation batch.")
    ] = 4,
    word_forms: Annotated[
        Path | None,
        typer.Option(
            "--word-forms",
            help="Word-forms CSV (name,format) for the lexicon baseline and the grouper; "
            "without it the lexicon baseline is skipped.",
        ),
    ] = None,
    encoder: Annotated[
        str,
        typer.Option("--encoder", help="Grouper's sentence encoder (bundled:minilm, id, none)."),
    ] = "bundled:minilm",
    grouper: Annotated[
        Grouper,
        typer.Option(
            "--grouper",
            help="Synonym grouping for scoring: embedding (offline) or llm (the profile's "
            "reasoning LLM, e.g. an OpenAI-compatible server).",
        ),
    ] = Grouper.embedding,
    profile: Annotated[
        str | None, typer.Option("--profile", help="Profile for --grouper llm.")
    ] = None,
    zero_shot: Annotated[
        bool, typer.Option("--zero-shot/--no-zero-shot", help="Score the untuned base too.")
    ] = True,
    manifest: Annotated[
        Path | None,
        typer.Option("--manifest", help="Video mode: CSV/JSONL mapping sample names to videos."),
    ] = None,
    num_frames: Annotated[
        int, typer.Option("--num-frames", help="Video mode: frames sampled per clip.")
    ] = 4,
    results: Annotated[
        Path | None, typer.Option("--results", help="Also copy results.json to this path.")
    ] = None,
    seed: SeedOption = 0,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    threads: Annotated[
        int | None, typer.Option("--threads", help="CPU threads for torch (default: torch's).")
    ] = None,
    precision: Annotated[
        Precision,
        typer.Option(
            "--precision",
            help="auto (bf16 on a CPU with avx512_bf16/AMX or a bf16 GPU, else fp32), fp32, "
            "bf16 (autocast; weights and optimizer stay fp32).",
        ),
    ] = Precision.auto,
    samples: Annotated[
        int,
        typer.Option(
            "--samples", help="Self-consistency: K sampled answers, labels kept by majority vote."
        ),
    ] = 1,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Sampling temperature (0: greedy).")
    ] = 0.0,
    wheel_dir: Annotated[
        Path | None,
        typer.Option(
            "--wheel-dir", help="Emotion-wheel folder: also score MER2025 wheel F-scores."
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show progress bars.")
    ] = True,
) -> None:
    """Train LoRA adapters on k folds and score them against the zero-shot base and a lexicon."""
    from meragent.config import announce_precision, load_settings, resolve_device
    from meragent.finetune.lora_run import make_run_config, run_lora_cv

    chosen_precision = precision.value if precision else load_settings(profile=profile).precision
    resolved_device = resolve_device(device)

    config = make_run_config(
        data_dir=data,
        base=base,
        out_dir=out or _default_out("finetune-lora"),
        modality=modality.value,
        language=language.value,
        folds=folds,
        fold=fold,
        limit=limit,
        eval_limit=eval_limit,
        hyper=dict(
            r=rank,
            alpha=alpha,
            dropout=dropout,
            learning_rate=learning_rate,
            epochs=epochs,
            max_steps=max_steps,
            batch_size=batch_size,
            grad_accum=grad_accum,
            seed=seed,
        ),
        max_length=max_length,
        max_new_tokens=max_new_tokens,
        eval_batch_size=eval_batch_size,
        device=resolved_device,
        dtype=dtype,
        seed=seed,
        zero_shot=zero_shot,
        word_forms=word_forms,
        encoder=encoder,
        grouper=grouper.value,
        profile=profile,
        manifest=manifest,
        num_frames=num_frames,
        threads=threads,
        precision=announce_precision(chosen_precision, resolved_device),
        samples=samples,
        temperature=temperature,
        wheel_dir=wheel_dir,
        progress=progress,
    )
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
    fmt: Annotated[
        ExportFormat, typer.Option("--format", help="Dataset format.")
    ] = ExportFormat.sharegpt,
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
