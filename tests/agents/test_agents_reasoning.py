"""Reasoning prompt (clue order, missing-modality notes) and its parsing, text and schema routes."""

from __future__ import annotations

from typing import Any

import pytest
from http_double import scripted_server
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from meragent.agents.chat import CallPolicy, ChatCallError, RoleChat, make_chat_model
from meragent.agents.prompts import (
    MAX_CLUE_CHARS,
    available_modalities,
    reasoning_messages,
    render_clues,
)
from meragent.agents.reasoning import (
    SixClassAnswer,
    last_class_mention,
    parse_reasoning_text,
    reason,
)
from meragent.config import RoleConfig, load_settings
from meragent.schema import Clue, Modality

CLUES = [
    Clue(modality=Modality.LEXICAL, source="subtitle", text="I finally passed the exam!"),
    Clue(
        modality=Modality.ACOUSTIC,
        source="prosody",
        text="high pitch, fast pace",
        probs={"happy": 0.6, "neutral": 0.3, "sad": 0.1},
    ),
    Clue.unavailable(Modality.VISUAL, "fer", "no face found"),
]


class ToolCallingFake(GenericFakeChatModel):
    """A fake that 'supports' tool calling: replies are AIMessages carrying tool calls."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


def _tool_reply(args: dict[str, Any]) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": "SixClassAnswer", "args": args, "id": "1"}])


def test_clues_are_rendered_acoustic_visual_lexical_with_missing_note() -> None:
    lines = render_clues(CLUES).splitlines()
    assert lines[0].startswith("Clues about the person, in this order: voice")
    assert lines[1:] == [
        "Voice: high pitch, fast pace (tool scores: happy 0.60, neutral 0.30, sad 0.10)",
        "Face and body: not available for this clip (no face found); do not guess it, rely on "
        "the other clues.",
        'Words: "I finally passed the exam!"',
    ]
    assert available_modalities(CLUES) == ["acoustic", "lexical"]


def test_several_clues_of_a_modality_name_their_source_and_words_their_language() -> None:
    clues = [
        Clue(modality=Modality.ACOUSTIC, source="prosody", text="flat pitch"),
        Clue(modality=Modality.ACOUSTIC, source="qwen2-audio", text="She sounds tired."),
        Clue(
            modality=Modality.LEXICAL,
            source="lexical",
            text='subtitle, language zh: "太好了"',
            data={"subtitle": "太好了", "language": "zh"},
        ),
        Clue(
            modality=Modality.VISUAL,
            source="fer",
            text="facial expression: happy 0.99",
            probs={"happy": 0.99, "sad": 0.01},
        ),
    ]
    assert render_clues(clues).splitlines()[1:] == [
        "Voice (prosody): flat pitch",
        "Voice (qwen2-audio): She sounds tired.",
        "Face and body: facial expression: happy 0.99",  # scores already in the text
        'Words (zh): "太好了"',
    ]


def test_long_clues_are_cut() -> None:
    long = Clue(modality=Modality.LEXICAL, source="asr", text="word " * 500)
    line = next(x for x in render_clues([long]).splitlines() if x.startswith("Words"))
    quoted = line.split(": ", 1)[1]
    assert len(quoted) == MAX_CLUE_CHARS + 2  # the cut text plus its quotes
    assert quoted.endswith('…"')


def test_text_and_structured_prompts_differ_only_in_the_answer_format() -> None:
    text_msgs = reasoning_messages(CLUES, structured=False)
    schema_msgs = reasoning_messages(CLUES, structured=True)
    assert [m["role"] for m in text_msgs] == ["system", "user"]
    assert "Answer: <class>" in text_msgs[1]["content"]
    assert "'emotion'" in schema_msgs[1]["content"]
    assert "neutral, angry, happy, sad, worried, surprise" in text_msgs[1]["content"]


@pytest.mark.parametrize(
    ("raw", "choice", "flags"),
    [
        ("She is thrilled.\nAnswer: happy", "happy", []),
        ("He sounds tense.\n**Final answer:** Worried.", "worried", []),
        ("Flat voice and calm face.\nEmotion: surprised", "surprise", []),
        ("Loud and furious voice.\nAnswer: joyful", "happy", []),
        ("She is not angry, she is sad.", "sad", ["no_answer_line", "choice_from_text"]),
        ("He is not happy at all.", None, ["no_answer_line", "no_six_class_choice"]),
        ("asdf qwerty zxcv", None, ["no_answer_line", "no_six_class_choice"]),
        (
            "The tone is odd.\nAnswer: bewildered",
            None,
            ["answer_not_a_class", "no_six_class_choice"],
        ),
        ("", None, ["empty_output"]),
    ],
)
def test_parse_reasoning_text(raw: str, choice: str | None, flags: list[str]) -> None:
    description, parsed_choice, parsed_flags = parse_reasoning_text(raw)
    assert parsed_choice == choice
    assert parsed_flags == flags
    assert "Answer:" not in description


def test_last_class_mention_skips_negations() -> None:
    assert last_class_mention("not sad but scared") == "worried"
    assert last_class_mention("isn't happy") is None


def test_text_route_with_a_fake_model() -> None:
    model = GenericFakeChatModel(messages=iter(["Voice and words agree: relief.\nAnswer: happy"]))
    result = reason(RoleChat("reasoning", model), CLUES)
    assert result.structured is False
    assert result.description == "Voice and words agree: relief."
    assert result.choice == "happy"
    assert result.flags == []
    assert result.modalities == ["acoustic", "lexical"]
    assert result.prompt == reasoning_messages(CLUES, structured=False)


def test_empty_output_falls_back_to_the_clues_as_description() -> None:
    result = reason(RoleChat("reasoning", GenericFakeChatModel(messages=iter([""]))), CLUES)
    assert result.choice is None
    assert result.flags == ["empty_output", "description_from_clues"]
    assert result.description == (
        "lexical: I finally passed the exam! acoustic: high pitch, fast pace"
    )
    assert result.raw == ""


def test_structured_route_constrains_the_choice() -> None:
    args = {"description": "Relieved and glad.", "emotion": "happy"}
    model = ToolCallingFake(messages=iter([_tool_reply(args)]))
    result = reason(RoleChat("reasoning", model), CLUES)
    assert result.structured is True
    assert (result.description, result.choice, result.flags) == ("Relieved and glad.", "happy", [])
    assert SixClassAnswer.model_json_schema()["properties"]["emotion"]["enum"] == [
        "neutral", "angry", "happy", "sad", "worried", "surprise",
    ]  # fmt: skip


def test_structured_answer_outside_the_six_is_parsed_best_effort() -> None:
    args = {"description": "She seems scared of the news.", "emotion": "terrified"}
    model = ToolCallingFake(messages=iter([_tool_reply(args)]))
    result = reason(RoleChat("reasoning", model), CLUES)
    assert result.choice == "worried"
    assert result.flags == ["structured_parse_failed", "answer_not_a_class", "choice_from_text"]
    assert '"terrified"' in result.raw


def test_a_server_rejecting_a_schema_falls_back_to_text_for_that_call() -> None:
    class RejectsSchemas(ToolCallingFake):
        def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
            if getattr(self, "_rejected", False):
                return super().invoke(input, config, **kwargs)
            object.__setattr__(self, "_rejected", True)
            raise ValueError("response_format json_schema is not supported")

    model = RejectsSchemas(messages=iter(["Plain answer.\nAnswer: sad"]))
    chat = RoleChat("reasoning", model, policy=CallPolicy(max_retries=0))
    result = reason(chat, CLUES)
    assert (result.choice, result.structured) == ("sad", False)
    assert result.flags == ["structured_unsupported"]
    assert chat.supports_structured_output() is True  # the next call tries the schema again


def _served_chat(url: str, *, retries: int) -> RoleChat:
    settings = load_settings(llm_base_url=url, llm_timeout_s=5.0)
    model = make_chat_model(RoleConfig(backend="openai", model="m"), settings)
    return RoleChat("reasoning", model, policy=CallPolicy(max_retries=retries, backoff_s=0.01))


def _schema_sent(request: dict[str, Any]) -> bool:
    return request["body"].get("response_format", {}).get("type") == "json_schema"


def test_one_garbage_reply_does_not_turn_off_structured_output_for_later_calls() -> None:
    # Before: the garbage body (JSONDecodeError) switched the process to plain text for good.
    with scripted_server("garbage", "json", "json") as server:
        chat = _served_chat(server.url, retries=1)
        first, second = reason(chat, CLUES), reason(chat, CLUES)
    assert len(server.requests) == 3
    assert all(_schema_sent(request) for request in server.requests)
    assert (first.structured, first.retries, first.choice) == (True, 1, "happy")
    assert (second.structured, second.retries, second.choice) == (True, 0, "happy")


def test_unparsable_content_and_a_rejected_schema_fall_back_per_call_only() -> None:
    # Content that is not the schema's JSON fails validation inside ChatOpenAI; before, that
    # too switched every later call of the process to plain text.
    script = ("text:%%% lorem ipsum", "ok", "400", "ok", "json")
    with scripted_server(*script) as server:
        chat = _served_chat(server.url, retries=0)
        garbled, rejected, later = (reason(chat, CLUES) for _ in range(3))
    for fallback in (garbled, rejected):
        assert (fallback.structured, fallback.choice) == (False, "neutral")
        assert fallback.flags == ["structured_unsupported"]
    assert (later.structured, later.choice, later.flags) == (True, "happy", [])
    assert [_schema_sent(r) for r in server.requests] == [True, False, True, False, True]


def test_a_down_server_is_an_error_not_a_format_fallback() -> None:
    class Down(ToolCallingFake):
        def invoke(self, input: Any, config: Any = None, **kwargs: Any) -> Any:
            raise ConnectionError("refused")

    chat = RoleChat(
        "reasoning", Down(messages=iter([])), policy=CallPolicy(max_retries=1, backoff_s=0)
    )
    with pytest.raises(ChatCallError, match="after 2 attempt"):
        reason(chat, CLUES)


def test_an_echoed_prompt_is_stripped_from_the_description() -> None:
    prompt = reasoning_messages(CLUES, structured=False)[1]["content"]
    echo = prompt.splitlines()[0]
    model = GenericFakeChatModel(messages=iter([f"{echo}\nShe is relieved and glad."]))
    result = reason(RoleChat("reasoning", model), CLUES)
    assert result.description == "She is relieved and glad."
    assert result.choice == "happy"  # "glad" is a happy synonym
    assert result.flags == ["no_answer_line", "choice_from_text", "prompt_echo"]
    assert result.raw.startswith(echo)
