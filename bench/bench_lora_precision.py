"""LoRA training throughput and loss, bf16 autocast vs fp32, in the same run (issue 13 item 3).

A SmolLM2-135M-shaped Llama (576 hidden, 30 layers, 9 heads / 3 KV heads, 1536 MLP, 49,152
vocab; random weights, so nothing is downloaded or dequantised) gets LoRA r16 on the seven
projections and takes the training step of ``meragent.finetune.lora_train.train_lora`` (its
``meragent.config.autocast``, clipping, AdamW) on the same seeded token
batches twice: once in fp32, once with ``precision="bf16"`` (bf16 autocast; weights, LoRA
parameters and AdamW stay fp32). The two runs alternate step by step so that load from other
processes falls on both alike. Recorded: samples/s of each, their ratio (target >= 1.8x), the
per-step losses and the relative gap of the final loss (target <= 2 %), plus the load average,
threads and CPU flags.

Usage: ``python bench/bench_lora_precision.py [--steps 4] [--batch 8] [--seq 350] [--threads 2]
[--out bench/results/lora_precision.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from meragent.config import cpu_has_bf16
from meragent.finetune.lora_examples import TokenizedExample
from meragent.finetune.lora_train import LoraHyperParams, add_lora

SMOLLM2_135M = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def build_model(seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).eval()


def make_examples(n: int, seq: int, seed: int) -> list[TokenizedExample]:
    """Seeded token sequences with a learnable pattern; loss on the last 30 tokens (an answer)."""
    import random

    rng = random.Random(seed)
    examples = []
    for index in range(n):
        period = rng.randint(3, 9)
        motif = [rng.randrange(100, 5000) for _ in range(period)]
        ids = [motif[i % period] for i in range(seq)]
        labels = [-100] * (seq - 30) + ids[seq - 30 :]
        examples.append(TokenizedExample(str(index), ids, labels, truncated=False))
    return examples


def run(steps: int, batch: int, seq: int) -> dict[str, Any]:
    import torch

    # Same seed for the base and for peft's LoRA init: the two models start identical.
    models = {p: add_lora(build_model(0), LoraHyperParams(seed=0)) for p in ("fp32", "bf16")}
    initial = {k: v.clone() for k, v in models["fp32"].state_dict().items()}
    # One warm-up step each (allocator, oneDNN kernels), not timed; then back to the start.
    warm = make_examples(batch, seq, seed=999)
    for precision, model in models.items():
        _Trainer(model, precision).step(warm)
        model.load_state_dict(initial)
    trainers = {p: _Trainer(m, p) for p, m in models.items()}
    optimisers: dict[str, list[float]] = {"fp32": [], "bf16": []}
    seconds: dict[str, float] = {"fp32": 0.0, "bf16": 0.0}
    for step in range(steps):
        examples = make_examples(batch, seq, seed=step)
        order = ("fp32", "bf16") if step % 2 == 0 else ("bf16", "fp32")
        for precision in order:
            t0 = time.perf_counter()
            loss = trainers[precision].step(examples)
            seconds[precision] += time.perf_counter() - t0
            optimisers[precision].append(loss)
    samples = steps * batch
    rate = {p: samples / seconds[p] for p in seconds}
    final = {p: optimisers[p][-1] for p in optimisers}
    return {
        "samples_per_s": rate,
        "speedup_bf16": rate["bf16"] / rate["fp32"],
        "losses": optimisers,
        "final_loss_rel_gap": abs(final["bf16"] - final["fp32"]) / final["fp32"],
        "seconds": seconds,
        "torch": torch.__version__,
    }


class _Trainer:
    """One optimizer per model across steps (the loop ``train_lora`` runs, one step at a time)."""

    def __init__(self, model: Any, precision: str) -> None:
        import torch

        self.model = model
        self.precision = precision
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.trainable = trainable
        self.optimizer = torch.optim.AdamW(trainable, lr=2e-4)

    def step(self, examples: list[TokenizedExample]) -> float:
        import torch

        from meragent.config import autocast
        from meragent.finetune.lora_examples import collate

        self.model.train()
        inputs = collate(examples, pad_token_id=0)
        with autocast("cpu", self.precision):
            loss = self.model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=350)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/lora_precision.json"))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    load_before = os.getloadavg()
    measured = run(args.steps, args.batch, args.seq)
    result = {
        "task": "LoRA r16 (7 targets) fwd+bwd+AdamW, SmolLM2-135M-shaped, bf16 autocast vs fp32",
        "config": vars(args) | {"out": str(args.out)},
        "model": SMOLLM2_135M,
        "cpu_has_bf16": cpu_has_bf16(),
        "machine": platform.processor() or platform.machine(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        **measured,
        "targets": {"speedup_bf16": ">= 1.8", "final_loss_rel_gap": "<= 0.02"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("samples_per_s", "speedup_bf16")}, indent=2))
    print(f"final loss gap {result['final_loss_rel_gap']:.4f}; wrote {args.out}")


if __name__ == "__main__":
    main()
