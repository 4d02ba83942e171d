"""GPU suite step: LoRA throughput of ``meragent finetune lora``'s code path, and generation.

A random-weight causal LM shaped like Qwen2.5-1.5B (and Qwen2.5-7B when the step's time allows)
is built from a config in bf16. The 1.5B model is saved to a temp folder and loaded back through
``load_causal_lm_uncached`` (the loader the CLI uses, with its dtype and device handling); the 7B
one stays in memory (writing 15 GB would eat the step's time). Training examples are fold 0 of
the OV332 descriptions, encoded by the CLI's ``encode_examples`` with the SmolLM2 tokenizer
(a ChatML template like Qwen's; ids fit both vocabularies), so the sequence lengths are real.

For each model, on the same micro-batches in the same process:

* ``meragent``: ``add_lora`` + ``train_lora`` (collation, host-to-device copies, the loss read
  back every micro-batch, clipping, scheduler: what the CLI runs per fold);
* ``bare``: a plain peft loop over the same batches, already on the device;

samples/s and tokens/s of both and their ratio (the issue's goal: >= 0.8), after one untimed
warm-up. Then greedy generation of 24 new tokens for 32 prompts in one batch, through the CLI's
``generate_chat_batch`` on the merged LoRA model, next to a bare ``generate`` on the same ids.
The tokenizer and the OV332 CSVs come from ``bench/gpu-carry`` (``gpu_suite.sh prepare``).

Usage: ``python bench/gpu_suite_lora.py --out lora.json [--tiny] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path
from typing import Any

from gpu_suite_common import Recorder, device_facts, peak_memory_gib, release_memory, synchronize

CARRY = Path(__file__).resolve().parent / "gpu-carry"
SHARED_OV = Path(__file__).resolve().parents[2] / "shared" / "data" / "ov332"
#: Qwen2.5 architectures (config.json of the Instruct releases) and a toy one.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-1.5b": {
        "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "qwen2.5-7b": {
        "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "tie_word_embeddings": False,
    },
    "tiny": {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 49152,
        "tie_word_embeddings": True,
    },
}  # fmt: skip
#: The 7B part's time over the 1.5B part's (5x the compute, but no save + load): skip it if short.
SEVEN_B_FACTOR = 3.0


def load_tokenizer(folder: Path) -> Any:
    from meragent.tools.causal_lm import load_tokenizer as load

    if not (folder / "tokenizer_config.json").is_file():
        raise SystemExit(f"no tokenizer in {folder}: run `bench/gpu_suite.sh prepare` first")
    return load(str(folder))[0]


def random_lm(shape: str, tokenizer: Any, device: str) -> Any:
    """A Qwen2 causal LM of ``shape`` with random bf16 weights, built on ``device``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        **SHAPES[shape],
        max_position_embeddings=32768,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # the same on transformers 4 and 5
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def training_data(tokenizer: Any, args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """Fold 0 of OV332 (English): encoded training examples and the held-out samples."""
    from meragent.finetune.lora_examples import encode_examples
    from meragent.finetune.ov_data import kfold_split, load_ov_samples, split_fold

    dataset = load_ov_samples(args.ov_data, "english")
    train, test = split_fold(dataset, kfold_split(dataset.names, 5, args.seed)[0])
    if args.tiny:
        train = train[:16]
    budget = args.max_length - args.max_new_tokens
    return encode_examples(tokenizer, train, max_prompt_tokens=budget), test


def hyper_params(args: argparse.Namespace) -> Any:
    from meragent.finetune.lora_train import LoraHyperParams

    return LoraHyperParams(
        batch_size=args.batch_size, grad_accum=args.grad_accum, max_steps=args.steps, seed=args.seed
    )


def micro_batches(examples: list[Any], hyper: Any) -> list[list[Any]]:
    """The micro-batches ``train_lora`` draws, in its order (same shuffles, epoch by epoch)."""
    from meragent.finetune.lora_train import _batches

    wanted = hyper.max_steps * hyper.grad_accum
    drawn: list[list[Any]] = []
    epoch = 0
    while len(drawn) < wanted:
        drawn.extend(_batches(examples, hyper.batch_size, hyper.seed + epoch))
        epoch += 1
    return drawn[:wanted]


def bare_peft_loop(base: Any, batches: list[dict[str, Any]], hyper: Any, device: str) -> float:
    """A plain peft training loop over tensors already on the device; returns seconds."""
    import torch
    from peft import LoraConfig, get_peft_model

    from meragent.finetune.lora_train import DEFAULT_TARGETS

    config = LoraConfig(
        r=hyper.r, lora_alpha=hyper.alpha, lora_dropout=hyper.dropout,
        target_modules=list(DEFAULT_TARGETS), task_type="CAUSAL_LM", bias="none",
    )  # fmt: skip
    torch.manual_seed(hyper.seed)
    model = get_peft_model(copy.deepcopy(base), config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=hyper.learning_rate)
    model.train()
    synchronize(device)
    started = time.perf_counter()
    for index, batch in enumerate(batches):
        (model(**batch).loss / hyper.grad_accum).backward()
        if (index + 1) % hyper.grad_accum == 0:
            torch.nn.utils.clip_grad_norm_(trainable, hyper.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    seconds = time.perf_counter() - started
    del model, optimizer
    return seconds


def train_both(base: Any, examples: list[Any], hyper: Any, pad_id: int, device: str) -> dict:
    """The CLI's LoRA loop and the bare one on the same micro-batches; returns rates + model."""
    from meragent.finetune.lora_examples import collate
    from meragent.finetune.lora_train import add_lora, train_lora

    drawn = micro_batches(examples, hyper)
    on_device = [{k: v.to(device) for k, v in collate(batch, pad_id).items()} for batch in drawn]
    samples = sum(len(batch) for batch in drawn)
    tokens = sum(len(example.input_ids) for batch in drawn for example in batch)
    bare_peft_loop(base, on_device[: hyper.grad_accum], hyper, device)  # warm-up, untimed
    release_memory(device)
    model = add_lora(copy.deepcopy(base), hyper)
    log = train_lora(model, examples, hyper, pad_token_id=pad_id, progress=False)
    meragent_peak = peak_memory_gib(device)
    release_memory(device)
    bare_s = bare_peft_loop(base, on_device, hyper, device)
    row = {
        "micro_batches": len(drawn), "samples": samples, "tokens": tokens,
        "meragent_s": round(log.seconds, 3), "bare_s": round(bare_s, 3),
        "meragent_samples_per_s": round(log.examples_seen / log.seconds, 2),
        "bare_samples_per_s": round(samples / bare_s, 2),
        "meragent_tokens_per_s": round(tokens / log.seconds, 1),
        "ratio": round(bare_s / log.seconds, 3),
        "loss_first": log.losses[0], "loss_last": log.losses[-1],
        "peak_memory_gib": meragent_peak,
    }  # fmt: skip
    return {"row": row, "model": model}


def generation(lm: Any, test: list[Any], args: argparse.Namespace, device: str) -> dict:
    """Greedy answers for 32 prompts in one batch: the CLI's call, then bare ``generate``."""
    import torch

    from meragent.finetune.lora_examples import fit_description
    from meragent.finetune.ov_data import prompt_messages
    from meragent.tools.causal_lm import generate_chat_batch, render_chat

    budget = args.max_length - args.max_new_tokens
    conversations = [
        prompt_messages(fit_description(lm.tokenizer, s.description, budget)[0])
        for s in (test * 2)[: args.prompts]
    ]
    generate_chat_batch(lm, conversations[:2], max_new_tokens=2)  # warm-up
    synchronize(device)
    t0 = time.perf_counter()
    answers = generate_chat_batch(lm, conversations, max_new_tokens=args.new_tokens)
    synchronize(device)
    meragent_s = time.perf_counter() - t0
    tokenizer = lm.tokenizer
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    prompts = [render_chat(tokenizer, c, generation_prompt=True) for c in conversations]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    tokenizer.padding_side = side
    batch = {k: encoded[k].to(device) for k in ("input_ids", "attention_mask")}
    synchronize(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        output = lm.model.generate(
            **batch, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
            do_sample=False, pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    synchronize(device)
    bare_s = time.perf_counter() - t0
    new_tokens = sum(a.completion_tokens for a in answers)
    return {
        "prompts": len(conversations), "max_new_tokens": args.new_tokens,
        "prompt_tokens_max": int(batch["input_ids"].shape[1]),
        "meragent_s": round(meragent_s, 3), "meragent_new_tokens": new_tokens,
        "meragent_tokens_per_s": round(new_tokens / meragent_s, 1),
        "bare_s": round(bare_s, 3),
        "bare_tokens_per_s": round((output.shape[1] - batch["input_ids"].shape[1])
                                   * len(conversations) / bare_s, 1),
    }  # fmt: skip


def load_via_cli_loader(model: Any, tokenizer: Any, folder: Path, device: str) -> tuple[Any, dict]:
    """Save the random model and load it back the way ``finetune lora`` does."""
    from meragent.tools.causal_lm import load_causal_lm_uncached

    t0 = time.perf_counter()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    saved_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    loaded = load_causal_lm_uncached(str(folder), device=device, dtype="bfloat16")
    facts: dict[str, Any] = {
        "save_s": round(saved_s, 1),
        "load_s": round(time.perf_counter() - t0, 1),
    }
    facts["loaded_dtype"] = str(next(loaded.model.parameters()).dtype)
    facts["loaded_device"] = str(next(loaded.model.parameters()).device)
    return loaded, facts


def measure_model(
    shape: str, tokenizer: Any, data: tuple[list[Any], list[Any]], args: argparse.Namespace,
    work: Path,
) -> dict[str, Any]:  # fmt: skip
    """Build (and for the first model, save + reload), train both loops, generate."""
    from meragent.tools.causal_lm import LoadedLM

    device = args.device
    t0 = time.perf_counter()
    model = random_lm(shape, tokenizer, device)
    result: dict[str, Any] = {
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "build_s": round(time.perf_counter() - t0, 1),
    }
    if shape == args.models[0]:
        lm, facts = load_via_cli_loader(model, tokenizer, work / shape, device)
        result["loader"] = {"path": "load_causal_lm_uncached", **facts}
    else:
        lm = LoadedLM(model=model, tokenizer=tokenizer, model_id=shape, has_chat_template=True)
        result["loader"] = {"path": "in memory (a 15 GB save + load would eat the step's time)"}
    del model  # ``lm`` holds the only copy the step needs
    examples, test = data
    trained = train_both(lm.model, examples, hyper_params(args), tokenizer.pad_token_id, device)
    result["train"] = trained["row"]
    release_memory(device)
    tuned = LoadedLM(
        model=trained["model"].merge_and_unload().eval(),
        tokenizer=tokenizer,
        model_id=f"{shape}+lora",
        has_chat_template=True,
    )
    del lm
    release_memory(device)
    result["generate"] = generation(tuned, test, args, device)
    result["generate"]["peak_memory_gib"] = peak_memory_gib(device)
    del tuned, trained
    release_memory(device)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="result JSON path")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy model, 2 steps")
    parser.add_argument(
        "--models", nargs="+", choices=sorted(SHAPES), default=None,
        help="default: qwen2.5-1.5b qwen2.5-7b (tiny with --tiny)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 (2 with --tiny)")
    parser.add_argument("--grad-accum", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="default 12 (2 with --tiny)")
    parser.add_argument("--max-length", type=int, default=512, help="the CLI's default")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="the CLI's default")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--deadline-s", type=float, default=None, help="skip 7B if short")
    parser.add_argument("--tokenizer", type=Path, default=CARRY / "tokenizer")
    parser.add_argument("--ov-data", type=Path, default=None, help="default: the carried OV332")
    args = parser.parse_args(argv)
    args.models = args.models or (["tiny"] if args.tiny else ["qwen2.5-1.5b", "qwen2.5-7b"])
    args.batch_size = args.batch_size or (2 if args.tiny else 8)
    args.steps = args.steps or (2 if args.tiny else 12)
    if args.tiny:
        args.prompts = min(args.prompts, 4)
    if args.ov_data is None:
        carried = CARRY / "ov332"
        args.ov_data = carried if (carried / "descriptions.csv").is_file() else SHARED_OV
    return args


def run(args: argparse.Namespace, work: Path) -> None:
    started = time.perf_counter()
    record = Recorder(args.out, **device_facts(args.device), tiny=args.tiny)
    settings = {
        "dtype": "bfloat16", "batch_size": args.batch_size, "grad_accum": args.grad_accum,
        "steps": args.steps, "max_length": args.max_length, "lora": "r=16 alpha=32 dropout=0.05",
        "data": "OV332 fold 0 of 5, English", "seed": args.seed,
    }  # fmt: skip
    record.set("settings", settings)
    tokenizer = load_tokenizer(args.tokenizer)
    data = training_data(tokenizer, args)
    record.set("train_examples", len(data[0]))
    first_s = None
    for shape in args.models:
        elapsed = time.perf_counter() - started
        if args.deadline_s is not None and first_s is not None:
            need = first_s * (SEVEN_B_FACTOR if "7b" in shape else 1.0)
            if elapsed + need > args.deadline_s:
                left = args.deadline_s - elapsed
                record.set(shape, {"skipped": f"needs ~{need:.0f}s, {left:.0f}s left"})
                continue
        t0 = time.perf_counter()
        record.set(shape, measure_model(shape, tokenizer, data, args, work))
        first_s = first_s or time.perf_counter() - t0
    record.set("step_s", round(time.perf_counter() - started, 1))
    record.finish()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu-suite-lora-") as work:
        run(args, Path(work))


if __name__ == "__main__":
    main()
