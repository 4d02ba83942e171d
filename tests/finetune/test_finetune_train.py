"""LoRA training on a tiny random Qwen2: loss falls, only LoRA weights train, adapter reloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_fixtures import TOY_SAMPLES

from meragent.errors import ConfigError
from meragent.finetune.lora_examples import encode_examples
from meragent.finetune.lora_fold import save_adapter
from meragent.finetune.lora_train import (
    LoraHyperParams,
    add_lora,
    planned_steps,
    save_loss_curve,
    train_lora,
)
from meragent.finetune.ov_data import OVSample
from meragent.tools.causal_lm import load_causal_lm_uncached


def _samples() -> list[OVSample]:
    return [
        OVSample(name=name, language="english", description=text, labels=labels)
        for name, text, labels in TOY_SAMPLES
    ]


def _logits(model, input_ids):  # type: ignore[no-untyped-def]
    import torch

    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_tiny_qwen2_trains_five_steps_and_its_adapter_reloads(
    tiny_qwen2: Path, tmp_path: Path
) -> None:
    import torch

    base = load_causal_lm_uncached(str(tiny_qwen2))
    examples = encode_examples(base.tokenizer, _samples(), max_prompt_tokens=1000)
    probe = torch.tensor([examples[0].input_ids])
    before = _logits(base.model, probe)

    params = LoraHyperParams(
        max_steps=5, batch_size=8, grad_accum=1, learning_rate=1e-2, dropout=0.0, seed=0
    )
    model = add_lora(base.model, params)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    log = train_lora(
        model, examples, params, pad_token_id=base.tokenizer.pad_token_id, progress=False
    )
    assert log.steps == 5 and len(log.losses) == 5
    assert log.examples_seen == 5 * len(examples)
    assert log.losses[-1] < log.losses[0]
    tuned = _logits(model, probe)

    adapter = save_adapter(model, base.tokenizer, str(tiny_qwen2), tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    assert config["base_model_name_or_path"] == str(tiny_qwen2)
    assert config["r"] == 16 and config["lora_alpha"] == 32
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }

    reloaded = load_causal_lm_uncached(str(tiny_qwen2), adapter=str(adapter))
    again = _logits(reloaded.model, probe)
    assert torch.allclose(again, tuned, atol=1e-5)  # the adapter is what was trained
    assert not torch.allclose(again, before, atol=1e-3)  # and it changes the output
    assert reloaded.model_id == f"{tiny_qwen2}+adapter"


def test_training_is_seeded(tiny_qwen2: Path) -> None:
    losses = []
    for _ in range(2):
        base = load_causal_lm_uncached(str(tiny_qwen2))
        examples = encode_examples(base.tokenizer, _samples()[:4], max_prompt_tokens=1000)
        params = LoraHyperParams(max_steps=2, batch_size=2, grad_accum=1, learning_rate=1e-2)
        model = add_lora(base.model, params)
        log = train_lora(
            model, examples, params, pad_token_id=base.tokenizer.pad_token_id, progress=False
        )
        losses.append(log.losses)
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_planned_steps_follow_epochs_batches_and_accumulation() -> None:
    params = LoraHyperParams(epochs=2, batch_size=2, grad_accum=2)
    assert planned_steps(10, params) == 6  # ceil(ceil(10/2)/2) = 3 per epoch
    assert planned_steps(10, params.model_copy(update={"max_steps": 4})) == 4
    assert planned_steps(1, LoraHyperParams(epochs=0.5)) == 1


def test_missing_target_modules_are_a_config_error(tiny_qwen2: Path) -> None:
    base = load_causal_lm_uncached(str(tiny_qwen2))
    with pytest.raises(ConfigError, match="none of the LoRA target modules"):
        add_lora(base.model, LoraHyperParams(target_modules=["c_attn"]))


def test_loss_curve_is_a_png(tmp_path: Path) -> None:
    path = save_loss_curve([3.0, 2.5, 2.1], tmp_path / "curves" / "loss.png", "toy")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
