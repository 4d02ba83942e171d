"""Typer options shared by the ``meragent fusion`` commands (train, predict, pseudo-label)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from meragent.commands.choices import (
    Augment,
    Device,
    FusionModel,
    MomentStorage,
    Precision,
    Valence,
)

SourceArg = Annotated[
    Path,
    typer.Argument(help="Clips with labels: a MER folder, a CSV/JSONL manifest or a video folder."),
]
EncodersOpt = Annotated[
    str,
    typer.Option(
        help="Comma-separated encoders under the feature cache; 'a+b' concatenates two into one "
        "input (e.g. hubert-large,clip-large,text)."
    ),
]
FeaturesOpt = Annotated[
    Path | None,
    typer.Option(help="Feature cache root (<root>/<encoder>/<clip>.npy); default: $HOME/features."),
]
ProfileOpt = Annotated[
    str | None, typer.Option(help="Profile name (offline|small|full) or a TOML path.")
]
FoldsOpt = Annotated[int, typer.Option(min=2, help="Cross-validation folds (stratified, seeded).")]
SearchOpt = Annotated[int, typer.Option(min=1, help="Hyper-parameter combinations to draw.")]
EpochsOpt = Annotated[int, typer.Option(min=1, help="Epochs per fold (best held-out epoch kept).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of folds, draws, weights and batch order.")]
ModelOpt = Annotated[
    FusionModel,
    typer.Option(
        "--model",
        help="Architecture: attention (MER2024 Eq. 1-3) or mertools_attention (MERTools' release).",
    ),
]
HiddenOpt = Annotated[str, typer.Option(help="Hidden sizes d to draw from (comma-separated).")]
LrOpt = Annotated[str, typer.Option(help="Learning rates to draw from (comma-separated).")]
DropoutOpt = Annotated[str, typer.Option(help="Dropout rates to draw from (comma-separated).")]
UniqueOpt = Annotated[
    bool, typer.Option("--unique", help="Never draw a combination twice (caps --search).")
]
PatienceOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Stop a fold after this many epochs without a better held-out score."),
]
PcaOpt = Annotated[
    int | None,
    typer.Option(
        "--pca-dim",
        min=1,
        help="Train first layers on each input's top principal components (faster; the saved "
        "model still reads raw features).",
    ),
]
ModalityDropoutOpt = Annotated[
    float,
    typer.Option(
        min=0.0,
        max=0.99,
        help="Drop a whole input of a training clip with this probability (noise robustness).",
    ),
]
ValenceOpt = Annotated[
    Valence, typer.Option(help="Valence head: auto (when labels have valence), on or off.")
]
DeviceOpt = Annotated[Device | None, typer.Option(help="cpu, cuda or auto (default: settings).")]
ThreadsOpt = Annotated[int | None, typer.Option(min=1, help="CPU threads for torch.")]
StackWorkersOpt = Annotated[
    int,
    typer.Option(
        min=1,
        help="Stacks of combinations trained at once, each in a thread with --threads torch "
        "threads (same results; on a 2-core CPU 2 workers x --threads 1 beat 1 x 2).",
    ),
]
PrecisionOpt = Annotated[
    Precision | None,
    typer.Option(
        help="auto|fp32|bf16 for the stacked first layers (bf16 matmuls, fp32 master weights, "
        "Adam and loss; default: the settings'; auto = bf16 where the CPU/GPU has it). "
        "Recorded in the model's config.json."
    ),
]
AdamMomentsOpt = Annotated[
    MomentStorage,
    typer.Option(
        help="Storage of the first layers' Adam moments with bf16 precision: fp32, or bf16 "
        "(both packed in 4 bytes per weight, stochastically rounded; less memory traffic, "
        "fp32 arithmetic either way). Recorded in search.json."
    ),
]
AugmentOpt = Annotated[
    Augment | None,
    typer.Option(
        help="'corrupt': also train on features of corrupted copies (--augment-features)."
    ),
]
AugmentFeaturesOpt = Annotated[
    Path | None,
    typer.Option(help="Feature cache of the corrupted copies (same encoders and clip names)."),
]


@dataclass(frozen=True)
class TrainingOptions:
    """What ``fusion train`` and ``fusion pseudo-label`` both train with: the k-fold search, the
    feature cache it reads, the head and where it runs (an option group, see
    :func:`meragent.commands.options.option_groups`)."""

    folds: FoldsOpt = 5
    search: SearchOpt = 50
    epochs: EpochsOpt = 100
    seed: SeedOpt = 0
    model: ModelOpt = FusionModel.attention
    features: FeaturesOpt = None
    hidden: HiddenOpt = "64,128,256"
    lr: LrOpt = "1e-3,1e-4"
    dropout: DropoutOpt = "0.2,0.3,0.4,0.5"
    unique: UniqueOpt = False
    patience: PatienceOpt = None
    pca_dim: PcaOpt = None
    modality_dropout: ModalityDropoutOpt = 0.0
    valence: ValenceOpt = Valence.auto
    device: DeviceOpt = None
    threads: ThreadsOpt = None
    stack_workers: StackWorkersOpt = 1
    precision: PrecisionOpt = None
    adam_moments: AdamMomentsOpt = MomentStorage.fp32
