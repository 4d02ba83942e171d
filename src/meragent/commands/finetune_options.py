"""Typer options of the ``meragent finetune`` commands (lora, merge, export)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from meragent.commands.choices import ExportFormat, Grouper, Language, Modality, Precision

DataOption = Annotated[
    Path,
    typer.Option(help="Folder with descriptions.csv and openset_labels.csv (e.g. data/ov332)."),
]
LanguageOption = Annotated[Language, typer.Option(help="Description language(s) to use.")]
FoldsOption = Annotated[int, typer.Option(help="Number of folds (split by name).")]
SeedOption = Annotated[int, typer.Option(help="Seed for the split and training.")]
DeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")]
DtypeOption = Annotated[
    str, typer.Option(help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16.")
]
FormatOption = Annotated[ExportFormat, typer.Option("--format", help="Dataset format.")]

# ---------------------------------------------------------------- lora: the run
LoraBaseOption = Annotated[
    str, typer.Option(help="Base model: HF id, local folder or bundled:NAME.")
]
LoraOutOption = Annotated[
    Path | None, typer.Option(help="Output folder (default: <home>/runs/finetune-lora).")
]
ModalityOption = Annotated[Modality, typer.Option(help="text: description -> labels; video.")]
FoldOption = Annotated[int | None, typer.Option(help="Run only this fold (0-based); default all.")]
LimitOption = Annotated[int | None, typer.Option(help="Use a seeded subset of N samples.")]
EvalLimitOption = Annotated[int | None, typer.Option(help="Score at most N held-out samples/fold.")]
ManifestOption = Annotated[
    Path | None, typer.Option(help="Video mode: CSV/JSONL mapping sample names to videos.")
]
NumFramesOption = Annotated[int, typer.Option(help="Video mode: frames sampled per clip.")]
ResultsOption = Annotated[Path | None, typer.Option(help="Also copy results.json to this path.")]
ThreadsOption = Annotated[
    int | None, typer.Option(help="CPU threads for torch (default: torch's).")
]
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        help="auto (bf16 on a CPU with avx512_bf16/AMX or a bf16 GPU, else fp32), fp32, "
        "bf16 (autocast; weights and optimizer stay fp32)."
    ),
]
ProgressOption = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show progress bars.")
]

# ---------------------------------------------------------------- lora: training
EpochsOption = Annotated[float, typer.Option(help="Training epochs per fold.")]
MaxStepsOption = Annotated[int | None, typer.Option(help="Stop after this many optimizer steps.")]
MaxLengthOption = Annotated[int, typer.Option(help="Token budget of prompt + answer.")]
LrOption = Annotated[float, typer.Option("--lr", help="AdamW learning rate.")]
BatchSizeOption = Annotated[int, typer.Option(help="Sequences per micro-batch.")]
GradAccumOption = Annotated[int, typer.Option(help="Micro-batches per optimizer step.")]
RankOption = Annotated[int, typer.Option(help="LoRA rank r.")]
AlphaOption = Annotated[int, typer.Option(help="LoRA alpha.")]
DropoutOption = Annotated[float, typer.Option(help="LoRA dropout.")]

# ---------------------------------------------------------------- lora: scoring
MaxNewTokensOption = Annotated[int, typer.Option(help="Answer budget at evaluation.")]
EvalBatchSizeOption = Annotated[int, typer.Option(help="Prompts per generation batch.")]
WordFormsOption = Annotated[
    Path | None,
    typer.Option(
        help="Word-forms CSV (name,format) for the lexicon baseline and the grouper; "
        "without it the lexicon baseline is skipped."
    ),
]
EncoderOption = Annotated[
    str, typer.Option(help="Grouper's sentence encoder (bundled:minilm, id, none).")
]
GrouperOption = Annotated[
    Grouper,
    typer.Option(
        help="Synonym grouping for scoring: embedding (offline) or llm (the profile's "
        "reasoning LLM, e.g. an OpenAI-compatible server)."
    ),
]
GrouperProfileOption = Annotated[str | None, typer.Option(help="Profile for --grouper llm.")]
ZeroShotOption = Annotated[
    bool, typer.Option("--zero-shot/--no-zero-shot", help="Score the untuned base too.")
]
SamplesOption = Annotated[
    int, typer.Option(help="Self-consistency: K sampled answers, labels kept by majority vote.")
]
TemperatureOption = Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")]
WheelDirOption = Annotated[
    Path | None, typer.Option(help="Emotion-wheel folder: also score MER2025 wheel F-scores.")
]
