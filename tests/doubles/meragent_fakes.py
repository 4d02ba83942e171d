"""Test and benchmark doubles: fake tools, a fake decoder, scripted chat models, fake RunDeps.

They exercise the real graph, trace store, checkpointer and batch runner with no weights and
no media decoding. Nothing in ``src/`` knows them: in-process tests pass ``fake_run_deps()``
as the ``runtime=`` of the library functions; subprocesses, the CLI and Ray workers select
them with a profile whose ``run_deps`` role names ``py:meragent_fakes:fake_run_deps_factory``
(``write_fake_profile``), with this folder (``DOUBLES_DIR``) on ``PYTHONPATH``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, PrivateAttr

from meragent.agents.chat import CallPolicy, RoleChat, UsageTally
from meragent.agents.labeler import LABELER_SYSTEM_PROMPT
from meragent.config import RoleConfig, Settings
from meragent.data.media_types import DecodedMedia
from meragent.graphs.runtime import RunDeps
from meragent.schema import EMOTIONS, Clip, Clue, Modality

#: This folder: put it on PYTHONPATH so a subprocess or Ray worker can import the doubles.
DOUBLES_DIR = Path(__file__).resolve().parent


def stable_index(text: str, modulo: int) -> int:
    """A deterministic index from text (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=4).digest(), "big") % modulo


def fake_decoder(delay_s: float = 0.0) -> Any:
    """A decoder that invents one second of silence and two black frames without reading files."""

    def decode(clip: Clip) -> DecodedMedia:
        if delay_s:
            time.sleep(delay_s)
        return DecodedMedia(
            clip_id=clip.id,
            sample_rate=16000,
            duration=1.0,
            audio=np.zeros(16000, dtype=np.float32),
            frames=np.zeros((2, 8, 8, 3), dtype=np.uint8),
            frame_times=np.array([0.25, 0.75]),
            fps=25.0,
        )

    return decode


@dataclass
class FakeTool:
    """A ModalityTool whose clue depends only on the clip id (so runs are reproducible)."""

    modality: Modality
    name: str = "fake"
    delay_s: float = 0.0
    thread_safe: bool = True

    def analyze(self, clip: Clip, media: DecodedMedia) -> Clue:
        if self.delay_s:
            time.sleep(self.delay_s)
        emotion = EMOTIONS[stable_index(f"{self.modality.value}:{clip.id}", len(EMOTIONS))]
        probs = {e: (0.5 if e == emotion else 0.1) for e in EMOTIONS}
        text = (
            clip.subtitle or f"words of {clip.id}"
            if self.modality is Modality.LEXICAL
            else f"{self.modality.value} cues suggest {emotion}"
        )
        return Clue(
            modality=self.modality,
            source=f"{self.name}-{self.modality.value}",
            text=text,
            probs=probs,
            model_id=f"{self.name}-{self.modality.value}",
        )


@dataclass
class FakeToolSet:
    """The ToolSet shape the graph expects, filled with fakes."""

    acoustic: Any
    visual: Any
    lexical: Any
    audio_describer: Any = None
    video_describer: Any = None


def fake_toolset(delay_s: float = 0.0) -> FakeToolSet:
    """Three fake modality tools (no describers)."""
    return FakeToolSet(
        acoustic=FakeTool(Modality.ACOUSTIC, delay_s=delay_s),
        visual=FakeTool(Modality.VISUAL, delay_s=delay_s),
        lexical=FakeTool(Modality.LEXICAL, delay_s=delay_s),
    )


def scripted_reply(messages: list[BaseMessage]) -> str:
    """Deterministic replies: a label list for the labeler prompt, a description otherwise."""
    last = str(messages[-1].content)
    emotion = EMOTIONS[stable_index(last, len(EMOTIONS))]
    if messages and str(messages[0].content) == LABELER_SYSTEM_PROMPT:
        return f"['{emotion}', 'tense']" if emotion != "neutral" else "[]"
    return f"The voice, face and words together point to a {emotion} person.\nAnswer: {emotion}"


class ScriptedChatModel(BaseChatModel):
    """A thread-safe fake chat model: replies from a function of the messages.

    ``fail_first`` makes the first N calls raise ``ConnectionError`` (a server that is down);
    ``delay_s`` makes each call sleep. Usage metadata counts words, so tallies can be tested.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reply: Any = scripted_reply
    model_id: str = "scripted"
    delay_s: float = 0.0
    fail_first: int = 0
    _calls: int = PrivateAttr(default=0)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return "meragent-scripted"

    @property
    def calls(self) -> int:
        return self._calls

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._lock:
            self._calls += 1
            call_number = self._calls
        if self.delay_s:
            time.sleep(self.delay_s)
        if call_number <= self.fail_first:
            raise ConnectionError("connection refused (scripted outage)")
        text = self.reply(messages)
        prompt_words = sum(len(str(m.content).split()) for m in messages)
        message = AIMessage(
            content=text,
            usage_metadata={
                "input_tokens": prompt_words,
                "output_tokens": len(text.split()),
                "total_tokens": prompt_words + len(text.split()),
            },
            response_metadata={"model_name": self.model_id},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])


def fake_chat_models(delay_s: float = 0.0) -> dict[str, ScriptedChatModel]:
    """Scripted reasoning and labeler models."""
    return {
        "reasoning": ScriptedChatModel(model_id="scripted-reasoning", delay_s=delay_s),
        "labeler": ScriptedChatModel(model_id="scripted-labeler", delay_s=delay_s),
    }


def fake_run_deps(*, delay_s: float = 0.0, settings: Settings | None = None) -> RunDeps:
    """Fake tools, decoder and scripted chat models (no weights, no media decoding).

    The chat roles retry like the settings' (``llm_max_retries``) with a short backoff.
    """
    tally = UsageTally()
    retries = settings.llm_max_retries if settings is not None else 2
    policy = CallPolicy(max_retries=retries, backoff_s=0.01)
    chats: dict[str, RoleChat | None] = {
        name: RoleChat(name, model, policy=policy, tally=tally)
        for name, model in fake_chat_models(delay_s).items()
    }
    return RunDeps(
        tools=fake_toolset(delay_s),
        chat_models=chats,
        decoder=fake_decoder(delay_s),
        tally=tally,
    )


def fake_run_deps_factory(settings: Settings, track: str, role: RoleConfig) -> RunDeps:
    """The ``run_deps`` plug-in: :func:`fake_run_deps`, ``options.delay_s`` seconds per call."""
    return fake_run_deps(delay_s=float(role.options.get("delay_s", 0.0)), settings=settings)


@dataclass
class DyingTool(FakeTool):
    """A FakeTool whose process dies (``os._exit``) on clip ``die_on``, once: the first time
    creates ``marker``, so a resumed run gets through."""

    die_on: str = ""
    marker: str = ""

    def analyze(self, clip: Clip, media: DecodedMedia) -> Clue:
        if clip.id == self.die_on and not Path(self.marker).exists():
            Path(self.marker).touch()
            os._exit(1)
        return super().analyze(clip, media)


def dying_run_deps_factory(settings: Settings, track: str, role: RoleConfig) -> RunDeps:
    """The ``run_deps`` plug-in: :func:`fake_run_deps` whose acoustic tool kills its process
    on the clip ``options.die_on`` (once, see :class:`DyingTool`)."""
    deps = fake_run_deps(settings=settings)
    deps.tools.acoustic = DyingTool(
        Modality.ACOUSTIC, die_on=str(role.options["die_on"]), marker=str(role.options["marker"])
    )
    return deps


def write_fake_profile(path: Path, *, delay_s: float = 0.0) -> Path:
    """A profile that runs everything on the doubles (identity grouper); returns ``path``."""
    path.write_text(
        "[roles.run_deps]\n"
        'backend = "py:meragent_fakes:fake_run_deps_factory"\n'
        f"options = {{ delay_s = {float(delay_s)!r} }}\n\n"
        "[roles.grouper]\n"
        'backend = "none"\n',
        encoding="utf-8",
    )
    return path


def doubles_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: os.environ) with this folder prepended to PYTHONPATH."""
    import os

    base = dict(os.environ if env is None else env)
    parts = [str(DOUBLES_DIR), *filter(None, base.get("PYTHONPATH", "").split(os.pathsep))]
    base["PYTHONPATH"] = os.pathsep.join(parts)
    return base


def scripted_chat_factory(role_name: str, role: RoleConfig, settings: Settings) -> BaseChatModel:
    """A ``py:meragent_fakes:scripted_chat_factory`` chat backend: a scripted model."""
    return ScriptedChatModel(model_id=f"scripted-{role.model or role_name}")
