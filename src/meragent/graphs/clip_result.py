"""What an executor produces for one clip: :class:`ClipResult`, the one thing a run commits.

An answered clip is ``ok``, or ``degraded`` when its media could not be decoded and it was
answered from what remained (the subtitle); a clip that raised is ``failed``, with a coarse stage
for ``errors.csv`` and a one-line reason. Both executors build their results here, so the two
decide every outcome the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from meragent.errors import DataError, one_line
from meragent.schema import Clip, ClipFailure, TraceStep

Status = Literal["ok", "degraded", "failed"]


def failure_stage(exc: BaseException) -> str:
    """A coarse stage name for errors.csv."""
    from meragent.errors import LLMError, MediaError

    if isinstance(exc, MediaError):
        return "media"
    if isinstance(exc, LLMError):
        return "llm"
    if isinstance(exc, DataError):
        return "data"
    return "pipeline"


def degraded_reason(output: Mapping[str, Any]) -> str | None:
    """Why an answered clip is only a partial success (its media could not be decoded), or None."""
    media = output.get("media") or {}
    error = media.get("error") if isinstance(media, Mapping) else None
    if not error:
        return None
    first = str(error).strip().splitlines()[0] if str(error).strip() else "decode failed"
    return f"media not decoded, answered from the subtitle: {first}"


def _field(prediction: Any, name: str) -> Any:
    if isinstance(prediction, Mapping):
        return prediction.get(name)
    return getattr(prediction, name, None)


@dataclass(frozen=True)
class ClipResult:
    """What an executor produces for one clip: the one thing a :class:`RunSession` commits.

    ``steps``: the clip's trace rows (node executions) to store with it; ``usage``: per-role
    token counters the clip spent, added to the run's tally.
    """

    seq: int
    clip_id: str
    status: Status
    latency_s: float
    result: dict[str, Any]
    discrete: str | None = None
    openset: list[str] = field(default_factory=list)
    description: str | None = None
    stage: str | None = None
    error: str | None = None
    reason: str | None = None
    steps: tuple[tuple[TraceStep, Any], ...] = ()
    usage: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def answered(
        cls, seq: int, clip_id: str, output: dict[str, Any], latency_s: float, **extra: Any
    ) -> ClipResult:
        """A clip the graph answered: ``ok``, or ``degraded`` when its media were not decoded."""
        prediction = output.get("prediction")
        reason = degraded_reason(output)
        return cls(
            seq=seq,
            clip_id=clip_id,
            status="ok" if reason is None else "degraded",
            latency_s=latency_s,
            result=output,
            discrete=_field(prediction, "discrete"),
            openset=list(_field(prediction, "openset") or []),
            description=_field(prediction, "description"),
            stage=None if reason is None else "media",
            error=reason,
            reason=reason,
            **extra,
        )

    @classmethod
    def failed(
        cls, seq: int, clip: Any, exc: BaseException, latency_s: float, **extra: Any
    ) -> ClipResult:
        """A clip that raised: a coarse stage and a one-line reason."""
        reason = one_line(exc)
        clip_id = clip.id if isinstance(clip, Clip) else str(clip["id"])
        return cls.failure(seq, clip_id, clip, failure_stage(exc), reason, type(exc).__name__,
                           latency_s, **extra)  # fmt: skip

    @classmethod
    def failure(
        cls,
        seq: int,
        clip_id: str,
        clip: Any,
        stage: str,
        reason: str,
        kind: str,
        latency_s: float,
        **extra: Any,
    ) -> ClipResult:
        """A failed clip from its parts (``kind``: the exception's type name)."""
        return cls(
            seq=seq,
            clip_id=clip_id,
            status="failed",
            latency_s=latency_s,
            result={"clip": clip},
            stage=stage,
            error=f"{kind}: {reason}",
            reason=reason,
            **extra,
        )

    @property
    def outcome(self) -> ClipFailure | None:
        """None for ``ok``; else what the summary lists (severity ``degraded`` or ``failed``)."""
        if self.status == "ok":
            return None
        severity = "degraded" if self.status == "degraded" else "failed"
        return ClipFailure(
            clip_id=self.clip_id,
            stage=self.stage or "pipeline",
            reason=self.reason or self.error or "",
            severity=severity,
        )
