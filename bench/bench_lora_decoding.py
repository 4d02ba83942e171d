"""Today's decoding vs decoding that ends, on training-fold samples (issue 14 item 3).

A fold's LoRA adapter labels ``--n`` samples of *its own training folds* (no held-out sample is
looked at) twice: with the decoding used before (greedy, stops only at EOS or the token cap,
raw labeler parse) and with the labeler's list decoding (stop at the closing ``]`` or at a
repeated item; a list cut by the cap loses its cut item). Recorded per decoding: replies that
hit the cap, replies with a repeated label in the raw text, labels per reply, generated tokens,
wall time, and set accuracy / recall / average (embedding grouper, default tau, word forms).
The untuned base writes prose for the same samples as the in-process reasoning LLM would
(``--prose``: a short description request, free vs prose decoding), counting replies that hit
the cap and replies that repeat a sentence.

``--votes K`` (self-consistency, issue 14 item 4) also labels ``--vote-n`` held-out samples of
the fold greedily and with K answers sampled at ``--temperature`` kept by majority vote.

Usage: ``python bench/bench_lora_decoding.py --run runs/lora5 --fold 0 [--n 32] [--votes 3]
[--out bench/results/lora_decoding.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from meragent.agents.labeler import parse_labels
from meragent.finetune.lora_examples import fit_description
from meragent.finetune.ov_data import OVSample, kfold_split, load_ov_samples, prompt_messages
from meragent.finetune.ov_eval import (
    SystemPrediction,
    embedding_grouper_factory,
    parse_generation,
    score_system,
)
from meragent.tools.causal_lm import generate_chat_batch, load_causal_lm_uncached
from meragent.tools.causal_lm_decoding import (
    LIST_DECODING,
    PROSE_DECODING,
    DecodingSettings,
    completed_items,
    completed_sentences,
)

PROSE_REQUEST = (
    "In two or three sentences, describe how the person feels and why, from these clues:\n{clues}"
)


def _repeats(pieces: list[str]) -> bool:
    return len(pieces) != len(set(pieces))


def label_pass(
    lm: Any, samples: list[OVSample], decoding: DecodingSettings, *, new: bool, budget: int
) -> tuple[list[SystemPrediction], dict[str, Any]]:
    conversations = [
        prompt_messages(fit_description(lm.tokenizer, s.description, budget)[0]) for s in samples
    ]
    t0 = time.perf_counter()
    predictions, capped, repeated, tokens = [], 0, 0, 0
    for start in range(0, len(conversations), 8):
        for out in generate_chat_batch(lm, conversations[start : start + 8], decoding=decoding):
            capped += out.hit_cap
            repeated += _repeats(completed_items(out.text + ","))
            tokens += out.completion_tokens
            if new:
                predictions.append(parse_generation(out.text, hit_cap=out.hit_cap))
            else:
                parse = parse_labels(out.text)
                predictions.append(SystemPrediction(labels=parse.labels, raw=parse.raw))
    stats = {
        "replies_hitting_cap": capped,
        "replies_with_repeated_label": repeated,
        "mean_labels": sum(len(p.labels) for p in predictions) / len(predictions),
        "generated_tokens": tokens,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return predictions, stats


def prose_pass(lm: Any, samples: list[OVSample], decoding: DecodingSettings) -> dict[str, Any]:
    conversations = [
        [{"role": "user", "content": PROSE_REQUEST.format(clues=s.description[:600])}]
        for s in samples
    ]
    capped = repeated = tokens = 0
    examples = []
    for start in range(0, len(conversations), 8):
        for out in generate_chat_batch(lm, conversations[start : start + 8], decoding=decoding):
            capped += out.hit_cap
            repeated += _repeats(completed_sentences(out.text + "\n"))
            tokens += out.completion_tokens
            examples.append(out.text)
    return {
        "replies_hitting_cap": capped,
        "replies_repeating_a_sentence": repeated,
        "generated_tokens": tokens,
        "first_reply": examples[0],
    }


def self_consistency(
    lm: Any,
    test: list[OVSample],
    greedy: DecodingSettings,
    args: argparse.Namespace,
    budget: int,
    grouper: Any,
) -> dict[str, Any]:
    """Greedy vs K sampled answers with a majority vote, on held-out samples of the fold."""
    from meragent.finetune.ov_eval import predict_with_lm, score_wheel_system

    sampled = greedy.model_copy(update={"temperature": args.temperature, "top_p": 0.95})
    out: dict[str, Any] = {
        "n_samples": len(test),
        "votes": args.votes,
        "temperature": args.temperature,
    }
    for name, decoding, votes in (("greedy", greedy, 1), ("vote", sampled, args.votes)):
        t0 = time.perf_counter()
        predictions = predict_with_lm(
            lm, test, max_prompt_tokens=budget, decoding=decoding, votes=votes, progress=False
        )
        scores = score_system(test, predictions, grouper)
        scores.update(score_wheel_system(test, predictions, args.wheel_dir))
        out[name] = {
            "scores": scores,
            "seconds": round(time.perf_counter() - t0, 1),
            # Kept so another vote rule can be scored from the same K answers (raw: " || ").
            "predictions": [
                {"name": s.name, "labels": p.labels, "raw": p.raw, "flags": p.flags}
                for s, p in zip(test, predictions, strict=True)
            ],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/lora5"))
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--prose", type=int, default=8, help="Prose replies of the base (0: off).")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ov332"))
    parser.add_argument("--wheel-dir", type=Path, default=Path("../shared/data/emotion_wheel"))
    parser.add_argument("--votes", type=int, default=3, help="Self-consistency K (0: off).")
    parser.add_argument("--vote-n", type=int, default=16, help="Held-out samples for the vote.")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/lora_decoding.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    record = json.loads((args.run / f"fold{args.fold}" / "fold.json").read_text("utf-8"))
    config = json.loads((args.run / "results.json").read_text("utf-8"))["config"]
    dataset = load_ov_samples(args.data)
    held_out = set(kfold_split(dataset.names, config["folds"], config["seed"])[args.fold])
    assert held_out == set(record["test_names"]), "split differs from the run's"
    train = sorted((s for s in dataset.samples if s.name not in held_out), key=lambda s: s.name)
    samples = train[: args.n]
    budget = config["max_length"] - config["max_new_tokens"]
    cap = config["max_new_tokens"]
    lm = load_causal_lm_uncached(config["base"], precision="bf16")
    today = DecodingSettings(max_new_tokens=cap)  # greedy, EOS or cap only
    ending = LIST_DECODING.model_copy(update={"max_new_tokens": cap})
    grouper = embedding_grouper_factory("bundled:minilm", args.wheel_dir / "word_forms.csv", None)
    result: dict[str, Any] = {
        "task": "LoRA labeler decoding on training-fold samples: today vs ending",
        "fold": args.fold,
        "n_samples": len(samples),
        "max_new_tokens": cap,
        "load_average": os.getloadavg(),
        "labeler": {},
    }
    if args.prose:
        free = DecodingSettings(max_new_tokens=96)
        prose = PROSE_DECODING.model_copy(update={"max_new_tokens": 96})
        result["reasoning_prose"] = {
            "today": prose_pass(lm, samples[: args.prose], free),
            "ending": prose_pass(lm, samples[: args.prose], prose),
        }
        print(json.dumps(result["reasoning_prose"], indent=2))
    from peft import PeftModel

    # The base is loaded once (GGUF de-quantisation is slow); the fold's adapter goes on it now.
    adapter = str(args.run / f"fold{args.fold}" / "adapter")
    lm.model = PeftModel.from_pretrained(lm.model, adapter).merge_and_unload().eval()
    for name, decoding, new in (("today", today, False), ("ending", ending, True)):
        predictions, stats = label_pass(lm, samples, decoding, new=new, budget=budget)
        stats["scores"] = score_system(samples, predictions, grouper)
        result["labeler"][name] = stats
        print(name, json.dumps(stats))
    if args.votes > 1:
        test = sorted((s for s in dataset.samples if s.name in held_out), key=lambda s: s.name)
        result["self_consistency"] = self_consistency(
            lm, test[: args.vote_n], ending, args, budget, grouper
        )
        print(json.dumps(result["self_consistency"], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
