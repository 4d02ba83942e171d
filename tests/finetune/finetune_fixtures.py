"""Builders for the LoRA tests: a tokenizer trained on the fly and tiny random causal LMs.

Everything is built from a config and saved to a temporary folder, then loaded back through
the real ``from_pretrained`` path, so no weights or hub access are needed.
"""

from __future__ import annotations

import csv
from pathlib import Path

from meragent.agents.labeler import LABELER_EXAMPLES, LABELER_SYSTEM_PROMPT

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]

#: Eight toy samples: (name, description, labels); one has an empty label list.
TOY_SAMPLES: list[tuple[str, str, list[str]]] = [
    ("s0", "She laughs and claps, delighted by the gift.", ["happy", "delighted"]),
    ("s1", "He shouts and slams the door in rage.", ["angry"]),
    ("s2", "She cries quietly, her voice breaking.", ["sad"]),
    ("s3", "He gasps, eyes wide, at the sudden news.", ["surprised"]),
    ("s4", "She frowns, biting her lip, unsure what will happen.", ["worried", "nervous"]),
    ("s5", "He reads the list aloud in a flat voice.", []),
    ("s6", "They smile warmly and relax on the sofa.", ["happy", "relaxed"]),
    ("s7", "He sighs heavily and looks down, hurt.", ["sad", "disappointed"]),
]


def _corpus() -> list[str]:
    texts = [LABELER_SYSTEM_PROMPT, "Description:\nEmotion list:", "User: Assistant:"]
    texts += [text for pair in LABELER_EXAMPLES for text in pair]
    texts += [f"{d} {labels!r}" for _, d, labels in TOY_SAMPLES]
    return texts


def build_tokenizer(out: Path, *, chat_template: bool = True) -> Path:
    """Train a small byte-level BPE on the prompt and toy texts; save it as an HF tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<|pad|>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
    )
    if chat_template:
        wrapped.chat_template = CHATML_TEMPLATE
    wrapped.save_pretrained(out)
    return out


def build_tiny_lm(out: Path, *, arch: str = "llama", chat_template: bool = True) -> Path:
    """A 2-layer random Llama or Qwen2 with the toy tokenizer, saved to ``out``."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    build_tokenizer(out, chat_template=chat_template)
    tokenizer = AutoTokenizer.from_pretrained(out)
    common = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "tie_word_embeddings": False,
    }
    torch.manual_seed(0)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.save_pretrained(out)
    return out


def write_toy_data(out: Path, *, extra_description_without_labels: bool = True) -> Path:
    """descriptions.csv + openset_labels.csv for TOY_SAMPLES (+ one row with no labels)."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "descriptions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "chinese", "english"])
        for name, description, _ in TOY_SAMPLES:
            writer.writerow([name, "她笑了。", description])
        if extra_description_without_labels:
            writer.writerow(["orphan", "无", "A row whose labels are missing."])
    with (out / "openset_labels.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "openset"])
        for name, _, labels in TOY_SAMPLES:
            writer.writerow([name, repr(labels)])
    return out


def write_toy_word_forms(path: Path) -> Path:
    """A four-family word-forms CSV in the MER2025 layout."""
    rows = [
        ("happy", "happy,happiness,happily"),
        ("angry", "angry,anger,angrily,rage"),
        ("sad", "sad,sadness,sadly"),
        ("at ease", "at ease"),
    ]
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "format"])
        writer.writerows(rows)
    return path


VL_SPECIAL_TOKENS = [
    *SPECIAL_TOKENS,
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
#: Renders string or multimodal (list of parts) content; a video part becomes its placeholder.
VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_qwen25_vl(out: Path) -> Path:
    """A 2-layer random Qwen2.5-VL (1-block vision tower) with a processor, saved to ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2TokenizerFast,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from meragent.finetune.lora_video import VIDEO_LABELER_SYSTEM_PROMPT

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=VL_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([*_corpus(), VIDEO_LABELER_SYSTEM_PROMPT], trainer=trainer)
    raw = out / "raw_tokenizer.json"
    tokenizer.save(str(raw))
    # The Qwen2.5-VL processor insists on a Qwen2 tokenizer class.
    wrapped = Qwen2TokenizerFast(
        tokenizer_file=str(raw), pad_token="<|pad|>", eos_token="<|im_end|>", unk_token=None
    )
    pixels = {"min_pixels": 56 * 56, "max_pixels": 112 * 112}
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=wrapped,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=VL_CHAT_TEMPLATE,
    )
    ids = {token: wrapped.convert_tokens_to_ids(token) for token in VL_SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(wrapped),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 4096,
            "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
            "pad_token_id": ids["<|pad|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 32,
            "fullatt_block_indexes": [0],
            "window_size": 56,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        pad_token_id=ids["<|pad|>"],
        eos_token_id=ids["<|im_end|>"],
    )
    torch.manual_seed(0)
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    raw.unlink()
    return out
