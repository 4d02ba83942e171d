"""The fixed lists of values CLI options take, as ``StrEnum``s.

Typer turns each into a choice: ``--help`` lists the values and any other value is a usage
error (exit 2) before a command runs. Members are ``str``s, so commands pass them on as they
are; the names follow the values (``global_`` because ``global`` is a keyword). Classes, not
the one-line functional form, so mypy knows each member's literal value. Tests check that the
lists match what the library accepts.
"""

from __future__ import annotations

from enum import StrEnum


class Track(StrEnum):
    """What a run answers: open-vocabulary labels, six-class (semi/noise), or all of them."""

    ov = "ov"
    semi = "semi"
    noise = "noise"
    all = "all"


class Executor(StrEnum):
    """Where a batch's clips run: threads in this process, or a Ray Data pipeline."""

    local = "local"
    ray = "ray"


class Precision(StrEnum):
    """Arithmetic of the encoders/training: bf16 autocast where the hardware has it."""

    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Device(StrEnum):
    """Where torch computes; ``auto`` is a GPU when one is visible."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class MediaOption(StrEnum):
    """Whether a row needs media to be usable (see ``meragent.data.manifest``)."""

    required = "required"
    optional = "optional"


class SynthAudio(StrEnum):
    """What the synthetic clips' audio track holds."""

    speech = "speech"
    tone = "tone"


class SubtitleLanguage(StrEnum):
    """Which MER transcript column a text encoder reads: chinese (zh) or english (en)."""

    zh = "zh"
    en = "en"


class Grouping(StrEnum):
    """Synonym grouping used by ``eval ov``."""

    identity = "identity"
    cached = "cached"
    embedding = "embedding"
    llm = "llm"
    wheel = "wheel"


class Parse(StrEnum):
    """How open-set list strings are read."""

    proper = "proper"
    mertools = "mertools"


class Scope(StrEnum):
    """Where the embedding grouper clusters: within each sample or over all labels at once."""

    sample = "sample"
    global_ = "global"


class FusionModel(StrEnum):
    """Fusion architectures (``meragent.tools.fusion_model.ARCHITECTURES``)."""

    attention = "attention"
    mertools_attention = "mertools_attention"


class MomentStorage(StrEnum):
    """How the fusion search stores its bf16 first layers' Adam moments (fp32 arithmetic)."""

    fp32 = "fp32"
    bf16 = "bf16"


class Valence(StrEnum):
    """Whether a fusion model gets a valence head (auto: when the labels have valence)."""

    auto = "auto"
    on = "on"
    off = "off"


class Augment(StrEnum):
    """Training-feature augmentations of ``fusion train``."""

    corrupt = "corrupt"


class Modality(StrEnum):
    """What the LoRA labeler reads: the written description, or the clip itself."""

    text = "text"
    video = "video"


class Language(StrEnum):
    """Which description language(s) become LoRA examples."""

    english = "english"
    chinese = "chinese"
    both = "both"


class Grouper(StrEnum):
    """Synonym grouping used to score LoRA predictions."""

    embedding = "embedding"
    llm = "llm"


class ExportFormat(StrEnum):
    """Dataset formats ``finetune export`` writes."""

    sharegpt = "sharegpt"
