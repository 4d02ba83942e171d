"""The run's clips/s clock and its progress bar (rich, on stderr: stdout stays for results).

:class:`Throughput` is the one figure the bar and the summary print: clips counted since the
first clip was handed to the executor, over the time until the last one was counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Throughput:
    """Clips per second of clip processing: the one figure the progress bar and summary show.

    The clock starts when the first clip is handed to the executor and stops when the last one
    is counted; the numerator is every clip counted in between (ok, degraded or failed).
    """

    done: int = 0
    started: float | None = None
    stopped: float | None = None

    def start(self) -> None:
        if self.started is None:
            self.started = time.perf_counter()

    def stop(self) -> None:
        if self.started is not None and self.stopped is None:
            self.stopped = time.perf_counter()

    @property
    def seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.stopped or time.perf_counter()) - self.started

    @property
    def rate(self) -> float:
        seconds = self.seconds
        return self.done / seconds if seconds > 0 else 0.0


def progress_bar(enabled: bool, rate: Callable[[], float] | None = None) -> Any:
    """A rich progress bar with clips/s, ETA and failure counts (a no-op when disabled).

    ``rate``: the clips/s to show (pass ``summary.throughput``'s, so the bar and the summary
    print the same figure); default: completed clips over the bar's own elapsed time.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        """Clips per second since the first clip (rich's own speed needs many updates)."""

        def render(self, task: Any) -> Text:
            if rate is not None:
                return Text(f"{rate():.2f} clips/s")
            elapsed = task.elapsed or 0.0
            return Text(f"{task.completed / elapsed if elapsed > 0 else 0.0:.2f} clips/s")

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TextColumn("failed: {task.fields[failed]} degraded: {task.fields[degraded]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )
