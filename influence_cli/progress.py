"""Progress reporting hooks. Library code reports through a :class:`Progress`; only the CLI
decides how (rich bars on a terminal, plain lines in CI, nothing with ``--quiet``)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

Advance = Callable[[int], None]


@dataclass(frozen=True)
class TaskTiming:
    """Wall time of one progress task (e.g. one checkpoint × split pass)."""

    task: str
    total: int
    seconds: float


class Progress(Protocol):
    """``with progress.task("train gradients", total=N) as advance: advance(batch_size)``."""

    def task(self, description: str, total: int) -> "contextmanager[Advance]": ...


class NoProgress:
    """The default: report nothing."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda n: None


class TimedProgress:
    """A :class:`Progress` that passes each task on to ``inner`` and records its wall time in
    ``timings``; ``seconds`` is the time since it was made."""

    def __init__(self, inner: Progress | None = None) -> None:
        self.inner = inner or NoProgress()
        self.started = time.monotonic()
        self.timings: list[TaskTiming] = []

    @property
    def seconds(self) -> float:
        """Wall time since this object was made."""
        return time.monotonic() - self.started

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        start = time.monotonic()
        with self.inner.task(description, total) as advance:
            yield advance
        self.timings.append(TaskTiming(description, total, time.monotonic() - start))
