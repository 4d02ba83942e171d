"""Precision plumbing: auto/fp32/bf16 resolution, bf16 autocast actually used, fp32 masters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from finetune_fixtures import TOY_SAMPLES

from meragent.errors import ConfigError
from meragent.finetune.lora_examples import encode_examples
from meragent.finetune.lora_train import LoraHyperParams, add_lora, train_lora
from meragent.finetune.ov_data import OVSample
from meragent.tools.causal_lm import generate_chat, load_causal_lm_uncached


def test_run_config_resolves_the_shared_precision_setting(tmp_path: Path) -> None:
    from meragent.config import cpu_has_bf16
    from meragent.finetune.lora_config import make_run_config

    def config(precision: str) -> Any:
        return make_run_config(
            data_dir=tmp_path, base="b", out_dir=tmp_path, precision=precision, device="cpu"
        )

    assert config("fp32").resolved_precision == "fp32"
    assert config("bf16").resolved_precision == "bf16"
    assert config("auto").resolved_precision == ("bf16" if cpu_has_bf16() else "fp32")
    with pytest.raises(ConfigError, match="precision"):
        config("fp16")


def _linear_output_dtypes(model: Any) -> list[Any]:
    import torch

    seen: list[Any] = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
            break
    return seen


@pytest.mark.parametrize(("precision", "expected"), [("bf16", "bfloat16"), ("fp32", "float32")])
def test_training_runs_in_the_chosen_precision_with_fp32_lora_weights(
    tiny_qwen2: Path, precision: str, expected: str
) -> None:
    import torch

    base = load_causal_lm_uncached(str(tiny_qwen2), precision=precision)
    assert base.precision == precision
    samples = [
        OVSample(name=n, language="english", description=t, labels=labels)
        for n, t, labels in TOY_SAMPLES
    ]
    examples = encode_examples(base.tokenizer, samples, max_prompt_tokens=1000)
    params = LoraHyperParams(max_steps=2, batch_size=4, grad_accum=1, dropout=0.0)
    model = add_lora(base.model, params)
    seen = _linear_output_dtypes(model)
    log = train_lora(
        model, examples, params, pad_token_id=base.tokenizer.pad_token_id, progress=False,
        precision=base.precision,
    )  # fmt: skip
    assert log.precision == precision
    assert seen and {str(d).removeprefix("torch.") for d in seen} == {expected}
    lora = [p for name, p in model.named_parameters() if "lora_" in name]
    assert lora and all(p.dtype == torch.float32 for p in lora)
    seen.clear()
    generate_chat(base, [{"role": "user", "content": "hi"}], max_new_tokens=2)
    assert {str(d).removeprefix("torch.") for d in seen} == {expected}
