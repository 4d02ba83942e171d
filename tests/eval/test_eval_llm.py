"""LLM grouper: lenient reply parsing, on-disk cache, failures, and the prompt it sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from meragent.eval.grouping import get_grouper
from meragent.eval.llm_grouper import GROUPING_SYSTEM_PROMPT, LLMGrouper, parse_groups
from meragent.eval.ov import score_ov

LABELS = ["happy", "joyful", "angry", "furious", "tired"]


@pytest.mark.parametrize(
    "reply",
    [
        "[['joyful', 'happy'], ['angry', 'furious'], ['tired']]",
        '[["joyful", "happy"], ["angry", "furious"], ["tired"]]',
        "```python\n[['joyful', 'happy'], ['angry', 'furious'], ['tired']]\n```",
        "Sure! Here are the groups: ['joyful', 'happy'], ['angry', 'furious'], ['tired'].",
        "Group 1: joyful, happy\nGroup 2: angry, furious\nGroup 3: tired",
        "1. Joyful, Happy\n2. Angry, Furious",
    ],
)
def test_parse_groups_accepts_common_reply_shapes(reply: str) -> None:
    groups = parse_groups(reply, LABELS)
    assert groups is not None
    assert groups[:2] == [["joyful", "happy"], ["angry", "furious"]]


def test_parse_groups_drops_invented_words_and_repeats() -> None:
    reply = "[['happy', 'ecstatic', 'joyful'], ['joyful', 'angry']]"
    assert parse_groups(reply, LABELS) == [["happy", "joyful"], ["angry"]]


def test_parse_groups_without_any_list_returns_none() -> None:
    assert parse_groups("I cannot help with that.", LABELS) is None
    assert parse_groups("[['unknown', 'words']]", LABELS) is None


def test_groups_map_to_first_member_and_are_cached(tmp_path: Path) -> None:
    model = FakeListChatModel(responses=["[['joyful', 'happy'], ['angry']]"])
    grouper = get_grouper("llm", chat_model=model, cache_dir=tmp_path, model_id="fake")
    assert grouper.group_ids("s", ["Happy", "joyful", "angry"]) == ["joyful", "joyful", "angry"]
    assert len(list(tmp_path.glob("*.json"))) == 1

    # A second grouper (a re-run) finds the answer on disk and never calls its model.
    class Exploding:
        def invoke(self, messages: Any) -> Any:
            raise AssertionError("the cache should have answered")

    rerun = LLMGrouper(Exploding(), cache_dir=tmp_path, model_id="fake")
    # Same label set in another order and sample: same cache key.
    assert rerun.group_ids("t", ["angry", "happy", "joyful"]) == ["angry", "joyful", "joyful"]
    assert rerun.calls == 0


def test_cache_key_depends_on_label_set_and_model_not_order() -> None:
    grouper = LLMGrouper(object(), model_id="m1")
    assert grouper.cache_key(["b", "a"]) == grouper.cache_key(["a", "b", "a"])
    assert grouper.cache_key(["a", "b"]) != grouper.cache_key(["a", "c"])
    assert grouper.cache_key(["a"]) != LLMGrouper(object(), model_id="m2").cache_key(["a"])


def test_failures_leave_the_sample_ungrouped_and_uncached(tmp_path: Path) -> None:
    class Failing:
        def invoke(self, messages: Any) -> Any:
            raise TimeoutError("server down")

    grouper = LLMGrouper(Failing(), cache_dir=tmp_path, model_id="x")
    assert grouper.group_ids("s", ["happy", "joyful"]) == ["happy", "joyful"]
    assert grouper.failures == ["s: TimeoutError: server down"]
    assert list(tmp_path.iterdir()) == []

    nonsense = LLMGrouper(FakeListChatModel(responses=["no idea"]), cache_dir=tmp_path)
    assert nonsense.group_ids("s", ["happy", "joyful"]) == ["happy", "joyful"]
    assert nonsense.failures == ["s: reply has no list of groups"]


def test_a_failure_is_kept_as_one_scrubbed_line(tmp_path: Path) -> None:
    from meragent.secrets import register_secret

    register_secret("sk-grouper-secret-123")

    class Noisy:
        def invoke(self, messages: Any) -> Any:
            raise RuntimeError("401 for key sk-grouper-secret-123\n<html>body</html>\ntrace")

    grouper = LLMGrouper(Noisy(), cache_dir=tmp_path, model_id="x")
    grouper.group_ids("s", ["happy", "joyful"])
    assert len(grouper.failures) == 1
    assert grouper.failures[0].startswith("s: RuntimeError: 401 for key ")
    assert "\n" not in grouper.failures[0] and "sk-grouper-secret-123" not in grouper.failures[0]


def test_single_label_needs_no_call() -> None:
    class Exploding:
        def invoke(self, messages: Any) -> Any:
            raise AssertionError("no call expected")

    assert LLMGrouper(Exploding()).group_ids("s", ["happy", "Happy"]) == ["happy", "happy"]


def test_score_ov_sends_ground_truth_and_prediction_together() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.requests: list[Any] = []

        def invoke(self, messages: Any) -> Any:
            self.requests.append(messages)
            return FakeListChatModel(responses=["[['happy', 'glad'], ['sad']]"]).invoke("x")

    recorder = Recorder()
    report = score_ov({"s": ["happy", "sad"]}, {"s": ["glad"]}, LLMGrouper(recorder))
    # Y = {happy, sad}, Y^ = {happy}: accuracy 1, recall 1/2
    assert (report.accuracy, report.recall) == (1.0, 0.5)
    (request,) = recorder.requests
    assert request[0] == ("system", GROUPING_SYSTEM_PROMPT)
    assert '["glad", "happy", "sad"]' in request[-1][1]


def test_prompt_is_our_own_wording() -> None:
    # The paper's sentence must not be copied (facts only).
    assert "Please assume the role of an expert" not in GROUPING_SYSTEM_PROMPT
    assert "list of lists" in GROUPING_SYSTEM_PROMPT
