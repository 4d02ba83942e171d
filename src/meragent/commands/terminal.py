"""What reaches the terminal besides the commands' own lines: logging and progress bars.

stdout carries the answer (summaries, tables, JSON) and nothing else. Log records of every
library go to stderr through one handler, at WARNING by default (``--verbose``: INFO, twice:
DEBUG), each line scrubbed of secrets. Libraries that would print on their own are pre-empted
before they are imported: whisperx installs an INFO handler on stdout unless its logger already
has one, and tqdm bars (transformers' GGUF de-quantizing bar) are turned off unless verbose.
Called from the root command's callback, never at import time.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from meragent.secrets import scrub

#: Loggers that attach their own console handler when imported without one.
SELF_CONFIGURING_LOGGERS = ("whisperx", "lightning", "lightning.pytorch", "lightning_fabric")
_HANDLER_NAME = "meragent-terminal"


class ScrubbingFormatter(logging.Formatter):
    """A formatter whose whole output (message and traceback) is scrubbed of secrets."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


class _StderrHandler(logging.StreamHandler):
    """Writes to the *current* ``sys.stderr`` (test runners swap it per command)."""

    def __init__(self) -> None:
        super().__init__()
        self.set_name(_HANDLER_NAME)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def level_for(verbose: int) -> int:
    """0 → WARNING, 1 → INFO, 2 or more → DEBUG."""
    return {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)


def _terminal_handler(level: int) -> logging.Handler:
    handler = _StderrHandler()
    handler.setLevel(level)
    handler.setFormatter(ScrubbingFormatter("%(levelname)s %(name)s: %(message)s"))
    return handler


def _replace_handlers(logger: logging.Logger, handler: logging.Handler) -> None:
    for old in list(logger.handlers):
        if isinstance(old, logging.StreamHandler) and not isinstance(old, logging.FileHandler):
            logger.removeHandler(old)
    logger.addHandler(handler)


def configure_terminal(verbose: int = 0) -> None:
    """Route all logging to stderr at the chosen level and silence progress bars if quiet."""
    level = level_for(verbose)
    handler = _terminal_handler(level)
    root = logging.getLogger()
    _replace_handlers(root, handler)
    root.setLevel(level)
    # Loggers that set their own level (Lightning: INFO) still meet the handler's level.
    for name in SELF_CONFIGURING_LOGGERS:
        logger = logging.getLogger(name)
        _replace_handlers(logger, handler)  # whisperx then skips its stdout handler
        logger.propagate = False
    if not verbose:
        _quiet_progress_bars()


def _quiet_progress_bars() -> None:
    """tqdm reads TQDM_DISABLE when imported; already-imported libraries are told directly."""
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
