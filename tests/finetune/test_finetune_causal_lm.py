"""load_causal_lm / generate_chat on tiny random models saved to disk; adapter base checks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from meragent.errors import ModelLoadError
from meragent.tools import causal_lm
from meragent.tools.causal_lm import (
    GenerationResult,
    generate_chat,
    generate_chat_batch,
    load_causal_lm,
    render_chat,
    resolve_model_source,
)

MESSAGES = [
    {"role": "system", "content": "Name the emotions."},
    {"role": "user", "content": "She smiles."},
]


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    causal_lm._load_causal_lm_cached.cache_clear()
    yield
    causal_lm._load_causal_lm_cached.cache_clear()


def test_loads_a_local_folder_once_per_process(tiny_llama: Path) -> None:
    lm = load_causal_lm(str(tiny_llama))
    assert lm.has_chat_template
    assert lm.model_id == str(tiny_llama)
    assert next(lm.model.parameters()).dtype.is_floating_point
    assert str(next(lm.model.parameters()).dtype) == "torch.float32"  # fp32 on CPU
    assert load_causal_lm(str(tiny_llama)) is lm


def test_greedy_generation_is_deterministic_and_counts_tokens(tiny_llama: Path) -> None:
    lm = load_causal_lm(str(tiny_llama))
    first = generate_chat(lm, MESSAGES, max_new_tokens=6)
    second = generate_chat(lm, MESSAGES, max_new_tokens=6)
    assert isinstance(first, GenerationResult)
    assert first == second
    prompt = render_chat(lm.tokenizer, MESSAGES, generation_prompt=True)
    assert first.prompt_tokens == len(lm.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert 1 <= first.completion_tokens <= 6


def test_left_padded_batch_matches_single_generation(tiny_llama: Path) -> None:
    lm = load_causal_lm(str(tiny_llama))
    longer = [MESSAGES[0], {"role": "user", "content": "He shouts and slams the door in rage."}]
    batch = generate_chat_batch(lm, [longer, MESSAGES], max_new_tokens=5)
    assert batch[1].text == generate_chat(lm, MESSAGES, max_new_tokens=5).text
    assert batch[1].prompt_tokens < batch[0].prompt_tokens
    assert generate_chat_batch(lm, [], max_new_tokens=5) == []


def test_base_without_chat_template_gets_the_plain_one(tiny_llama_no_template: Path) -> None:
    lm = load_causal_lm(str(tiny_llama_no_template))
    assert not lm.has_chat_template
    prompt = render_chat(lm.tokenizer, MESSAGES, generation_prompt=True)
    assert prompt == "Name the emotions.\n\nUser: She smiles.\nAssistant:"
    assert generate_chat(lm, MESSAGES, max_new_tokens=3).completion_tokens >= 1


def _fake_adapter(folder: Path, base: str) -> Path:
    folder.mkdir()
    config = {"base_model_name_or_path": base, "peft_type": "LORA"}
    (folder / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def test_adapter_for_another_base_is_a_one_line_error(tiny_llama: Path, tmp_path: Path) -> None:
    adapter = _fake_adapter(tmp_path / "adapter", "Qwen/Qwen2.5-7B-Instruct")
    with pytest.raises(ModelLoadError) as info:
        load_causal_lm(str(tiny_llama), adapter=str(adapter))
    message = str(info.value)
    assert "\n" not in message
    assert "trained on 'Qwen/Qwen2.5-7B-Instruct'" in message
    assert f"not on the base {str(tiny_llama)!r}" in message


def test_adapter_folder_without_config_is_rejected(tiny_llama: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no adapter_config\.json"):
        load_causal_lm(str(tiny_llama), adapter=str(tmp_path))


def test_hub_id_and_local_copy_count_as_the_same_base(tmp_path: Path) -> None:
    local = tmp_path / "Qwen2.5-1.5B-Instruct"
    local.mkdir()
    adapter = _fake_adapter(tmp_path / "adapter", "Qwen/Qwen2.5-1.5B-Instruct")
    causal_lm.check_adapter_base(str(adapter), str(local))  # no error
    with pytest.raises(ModelLoadError):
        causal_lm.check_adapter_base(str(adapter), "Qwen/Qwen2.5-7B-Instruct")


def test_unknown_bundle_and_missing_folder_are_model_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown bundled model"):
        load_causal_lm("bundled:gpt-9")
    with pytest.raises(ModelLoadError, match="cannot load causal LM model"):
        load_causal_lm(str(tmp_path / "nowhere"))


def test_bundled_smollm2_resolves_to_the_gguf_inside_the_package() -> None:
    source = resolve_model_source("bundled:smollm2-135m")
    assert source.gguf_file is not None and source.gguf_file.endswith(".gguf")
    assert (Path(source.path) / source.gguf_file).is_file()
    assert resolve_model_source("org/model") == causal_lm.ModelSource(path="org/model")


@pytest.mark.slow
def test_bundled_smollm2_loads_and_answers() -> None:
    lm = load_causal_lm("bundled:smollm2-135m")
    assert lm.has_chat_template
    result = generate_chat(lm, MESSAGES, max_new_tokens=4)
    assert result.completion_tokens >= 1 and result.text
