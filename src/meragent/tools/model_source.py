"""Where a role's weights come from: a Hugging Face id or a local folder, checked before loading.

Every ``load_*`` function in this package goes through :func:`resolve_model_source`, so a local
path that does not exist fails at once with one line naming the role and the path, instead of
transformers falling back to the hub and failing later with a network error.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from meragent.errors import MeragentError, ModelLoadError

E = TypeVar("E")

# "org/name" or "name" (optionally "@revision"): what the hub accepts as a repository id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_local_path(source: str) -> bool:
    """True when ``source`` is meant as a filesystem path rather than a hub id."""
    if source.startswith(("/", "./", "../", "~", "file:")) or "\\" in source:
        return True
    return source.count("/") > 1 or not _HUB_ID.match(source)


def resolve_model_source(role: str, source: str | Path | None) -> str:
    """Return the id or absolute path to hand to ``from_pretrained``; raise for missing paths."""
    if source is None or str(source).strip() == "":
        raise ModelLoadError(role, "", "no model id or path is configured for this role")
    text = str(source).strip()
    candidate = Path(text.removeprefix("file:")).expanduser()
    if candidate.exists():
        return str(candidate.resolve())
    if looks_like_local_path(text):
        raise ModelLoadError(role, text, "path does not exist")
    return text


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception message (library errors can be pages long)."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__


#: Serialises weight loads (re-entrant: a loader may load a sub-model). ``from_pretrained``
#: patches ``torch.nn.Module`` globally while it builds a model, so two loads at once in parallel
#: tool nodes left parameters on the meta device; any code that builds torch modules lazily in a
#: tool thread (heads, whisperx's VAD, sentence-transformers) takes it too. Inference runs
#: unlocked, and loaders that build no torch module (TFLite, OpenCV) do not wait for it.
HF_LOAD_LOCK = threading.RLock()


@contextlib.contextmanager
def model_load_errors(role: str, source: str) -> Iterator[None]:
    """Load under :data:`HF_LOAD_LOCK`, turning the many ways ``from_pretrained`` fails into
    one ``ModelLoadError`` line."""
    try:
        with HF_LOAD_LOCK:
            yield
    except MeragentError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, ImportError, TypeError) as exc:
        raise ModelLoadError(role, source, first_line(exc)) from exc


def load_pretrained(
    role: str,
    source: str,
    preprocessor_class: Any,
    model_class: Any,
    *,
    dtype: str | None,
    device: str,
    layers: int | None = None,
) -> tuple[Any, Any]:
    """(preprocessor, model in eval mode on ``device``) of a transformers checkpoint.

    ``layers``: the number of last hidden states the caller sums; more than the model has is a
    ``ModelLoadError``.
    """
    with model_load_errors(role, source):
        preprocessor = preprocessor_class.from_pretrained(source)
        model = model_class.from_pretrained(source, dtype=torch_dtype(dtype, device))
    if layers is not None:
        n_states = int(model.config.num_hidden_layers) + 1
        if not 1 <= layers <= n_states:
            raise ModelLoadError(
                role, source, f"layers={layers} but the model has {n_states} states"
            )
    model.to(device).eval()
    return preprocessor, model


def load_encoder(
    encoder: Callable[..., E],
    role: str,
    model_id_or_path: str,
    classes: tuple[str, str],
    *,
    dtype: str | None,
    device: str,
    layers: int | None = None,
    **settings: Any,
) -> E:
    """An embedding model over a transformers checkpoint: ``encoder(model, preprocessor,
    model_id, device, **settings)`` (the field order of the encoder dataclasses).

    ``classes`` names the transformers preprocessor and model classes (imported only now);
    ``layers``, the hidden states the encoder sums, is checked against the model (see
    :func:`load_pretrained`) and passed on with the settings.
    """
    source = resolve_model_source(role, model_id_or_path)
    import transformers

    preprocessor_class, model_class = (getattr(transformers, name) for name in classes)
    preprocessor, model = load_pretrained(
        role, source, preprocessor_class, model_class, dtype=dtype, device=device, layers=layers
    )
    if layers is not None:
        settings["layers"] = layers
    return encoder(model, preprocessor, str(model_id_or_path), device, **settings)


def torch_dtype(name: str | None, device: str) -> object:
    """Map a dtype name to torch; ``auto`` picks float16 on CUDA and float32 elsewhere."""
    import torch

    key = (name or "auto").lower()
    if key == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if key not in table:
        raise ModelLoadError("dtype", key, f"unknown dtype (choose from {', '.join(table)})")
    return table[key]
