"""Progress reporting hooks. Library code reports through a :class:`Progress`; only the CLI
decides how (rich bars on a terminal, plain lines in CI, nothing with ``--quiet``)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Protocol

Advance = Callable[[int], None]


class Progress(Protocol):
    """``with progress.task("train gradients", total=N) as advance: advance(batch_size)``."""

    def task(self, description: str, total: int) -> "contextmanager[Advance]": ...


class NoProgress:
    """The default: report nothing."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda n: None
