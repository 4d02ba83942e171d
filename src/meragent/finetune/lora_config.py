"""The options of one ``meragent finetune lora`` run, validated once, and the scorers they name."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from meragent.errors import ConfigError
from meragent.finetune.lora_train import LoraHyperParams
from meragent.finetune.ov_data import Language

Modality = Literal["text", "video"]
Reporter = Callable[[str], None]


class LoraRunConfig(BaseModel):
    """Everything one ``meragent finetune lora`` run needs, validated on construction."""

    model_config = ConfigDict(extra="forbid")

    data_dir: Path
    base: str
    out_dir: Path
    modality: Modality = "text"
    language: Language = "english"
    folds: int = Field(default=5, ge=2)
    fold: int | None = Field(default=None, ge=0)
    limit: int | None = Field(default=None, ge=2)
    eval_limit: int | None = Field(default=None, ge=1)
    hyper: LoraHyperParams = Field(default_factory=LoraHyperParams)
    max_length: int = Field(default=512, ge=64)
    max_new_tokens: int = Field(default=48, ge=1)
    eval_batch_size: int = Field(default=4, ge=1)
    device: str = "cpu"
    dtype: str = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    samples: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.0, ge=0.0)
    wheel_dir: Path | None = None
    seed: int = 0
    zero_shot: bool = True
    word_forms: Path | None = None
    encoder: str = "bundled:minilm"
    grouper: Literal["embedding", "llm"] = "embedding"
    profile: str | None = None
    grouper_tau: float | None = None
    manifest: Path | None = None
    num_frames: int = Field(default=4, ge=1)
    threads: int | None = Field(default=None, ge=1)
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> LoraRunConfig:
        if self.fold is not None and self.fold >= self.folds:
            raise ConfigError(f"--fold {self.fold} is out of range for {self.folds} folds")
        if self.samples > 1 and self.temperature <= 0:
            raise ConfigError("--samples > 1 (self-consistency) needs --temperature above 0")
        if self.modality == "video" and self.manifest is None:
            raise ConfigError("--modality video needs --manifest (sample name -> video file)")
        return self

    @property
    def resolved_precision(self) -> str:
        from meragent.config import resolve_device, resolve_precision

        return resolve_precision(self.precision, resolve_device(self.device))

    def decoding(self) -> Any:
        """The labeler's list decoding with this run's answer budget and temperature."""
        from meragent.tools.causal_lm_decoding import LIST_DECODING

        return LIST_DECODING.model_copy(
            update={"max_new_tokens": self.max_new_tokens, "temperature": self.temperature}
        )

    @property
    def max_prompt_tokens(self) -> int:
        # The answer's room comes off the sequence budget, in training and at evaluation alike.
        return self.max_length - self.max_new_tokens


def grouper_factory(config: LoraRunConfig) -> Callable[[], Any]:
    """Fresh groupers for scoring: offline ``embedding`` or the configured ``llm``."""
    from meragent.finetune.ov_eval import embedding_grouper_factory, llm_grouper_factory

    if config.grouper == "llm":
        return llm_grouper_factory(config.profile)
    return embedding_grouper_factory(config.encoder, config.word_forms, config.grouper_tau)


def make_run_config(**fields: Any) -> LoraRunConfig:
    """Build a LoraRunConfig, turning validation errors into one-line ConfigErrors."""
    from pydantic import ValidationError

    try:
        return LoraRunConfig(**fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "config"
        raise ConfigError(f"invalid finetune option {where}: {first['msg']}") from None
