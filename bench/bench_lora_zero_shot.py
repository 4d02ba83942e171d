"""Zero-shot base predictions for one fold's held-out samples, in a process of their own.

Used for the issue-14 run on the loaded 2-core machine: the fold's LoRA process ran with
``--no-zero-shot`` and this one labelled the same held-out names with the untuned base at the
same time (same split, prompt budget, list decoding and precision as ``finetune lora``).
``bench/bench_lora_5fold.py`` merges ``runs/<run>_zero_shot/fold<k>.jsonl`` into the fold.

Usage: ``python bench/bench_lora_zero_shot.py FOLD OUT.jsonl [--max-length 320]
[--max-new-tokens 40]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from meragent.finetune.ov_data import kfold_split, load_ov_samples, split_fold
from meragent.finetune.ov_eval import predict_with_lm
from meragent.tools.causal_lm import load_causal_lm_uncached
from meragent.tools.causal_lm_decoding import LIST_DECODING


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fold", type=int)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/ov332"))
    parser.add_argument("--base", default="bundled:smollm2-135m")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-length", type=int, default=320)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    dataset = load_ov_samples(args.data)
    _, test = split_fold(dataset, kfold_split(dataset.names, args.folds, args.seed)[args.fold])
    t0 = time.perf_counter()
    lm = load_causal_lm_uncached(args.base, precision="bf16")
    t1 = time.perf_counter()
    predictions = predict_with_lm(
        lm,
        test,
        max_prompt_tokens=args.max_length - args.max_new_tokens,
        decoding=LIST_DECODING.model_copy(update={"max_new_tokens": args.max_new_tokens}),
        batch_size=8,
        progress=False,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as handle:
        for sample, prediction in zip(test, predictions, strict=True):
            row = {"name": sample.name, "zero_shot": prediction.model_dump()}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    seconds = time.perf_counter() - t1
    print(f"load {t1 - t0:.0f}s, predict {seconds:.0f}s, {len(test)} samples -> {args.out}")


if __name__ == "__main__":
    main()
