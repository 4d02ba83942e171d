"""Merge a LoRA adapter into its base model and save a standalone transformers checkpoint."""

from __future__ import annotations

from pathlib import Path

from meragent.errors import ModelLoadError
from meragent.tools.causal_lm import adapter_base_model, load_causal_lm_uncached


def merge_adapter(
    adapter: Path,
    out_dir: Path,
    *,
    base: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
) -> Path:
    """Fold ``adapter`` into ``base`` (default: the base the adapter records) and save it.

    The result loads with plain ``AutoModelForCausalLM.from_pretrained(out_dir)`` (safetensors,
    tokenizer and chat template included), e.g. for vLLM without ``--enable-lora``.
    """
    base = base or adapter_base_model(str(adapter))
    if not base:
        raise ModelLoadError(
            "LoRA adapter", str(adapter), "it does not record its base model: pass --base"
        )
    loaded = load_causal_lm_uncached(base, adapter=str(adapter), device=device, dtype=dtype)
    merged = loaded.model.merge_and_unload()
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out_dir), safe_serialization=True)
    loaded.tokenizer.save_pretrained(str(out_dir))
    return out_dir
