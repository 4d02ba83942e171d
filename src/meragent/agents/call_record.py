"""What an agent step's result records of the LLM call behind it, for the trace.

The reasoning and labeler results both keep the prompt, the raw output and the call's own
figures (retries, latency, token usage); this is the one place that says which fields those are.
"""

from __future__ import annotations

from typing import Any

from meragent.agents.chat import ChatReply


def call_fields(reply: ChatReply, prompt: list[dict[str, str]], raw: str) -> dict[str, Any]:
    """``raw``, ``prompt``, ``retries``, ``latency_s`` and ``usage`` of a result made from
    ``reply`` (``raw``: the output as the step keeps it, e.g. its parsed JSON)."""
    return {
        "raw": raw,
        "prompt": prompt,
        "retries": reply.retries,
        "latency_s": reply.latency_s,
        "usage": reply.usage,
    }
