"""Progress reporting hooks. Library code reports through a :class:`Progress`; the caller decides how.

Every library call that takes ``progress=`` accepts (:func:`as_progress`):

- ``None``: report nothing (the default);
- a :class:`Progress`: any object with ``task(description, total)`` returning a context manager that
  yields ``advance(n)``, e.g. :class:`NotebookProgress` (bars in Jupyter or a terminal) or
  :class:`LogProgress` (plain lines, what the CLI prints when stderr is not a terminal);
- a callable ``callback(task: str, done: int, total: int)``, called with ``done = 0`` when a task
  starts and again each time work advances (``done == total`` at its end).
"""

from __future__ import annotations

import math
import os
import time
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from influence_cli.errors import InfluenceError, ParameterError

Advance = Callable[[int], None]
#: ``callback(task, done, total)``: the callback form of progress.
ProgressCallback = Callable[[str, int, int], None]

#: Environment variable: seconds between two progress lines of :class:`LogProgress` (default 15).
INTERVAL_ENV = "INFLUENCE_CLI_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 15.0


@dataclass(frozen=True)
class TaskTiming:
    """Wall time of one progress task (e.g. one checkpoint × split pass)."""

    task: str
    total: int
    seconds: float


class Progress(Protocol):
    """``with progress.task("train gradients", total=N) as advance: advance(batch_size)``."""

    def task(self, description: str, total: int) -> AbstractContextManager[Advance]: ...


#: What a ``progress=`` parameter accepts besides ``None``.
ProgressLike = Progress | ProgressCallback


class NoProgress:
    """The default: report nothing."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        yield lambda n: None


class CallbackProgress:
    """Calls ``callback(task, done, total)`` with ``done = 0`` when a task starts and after each advance."""

    def __init__(self, callback: ProgressCallback) -> None:
        self.callback = callback

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        done = 0
        self.callback(description, done, total)

        def advance(n: int) -> None:
            nonlocal done
            done += n
            self.callback(description, done, total)

        yield advance


def as_progress(progress: ProgressLike | None) -> Progress:
    """The :class:`Progress` behind a ``progress=`` argument: ``None`` reports nothing, a Progress is
    used as is, a callable ``(task, done, total)`` is wrapped in :class:`CallbackProgress`."""
    if progress is None:
        return NoProgress()
    if hasattr(progress, "task"):
        return progress  # type: ignore[return-value]
    if callable(progress):
        return CallbackProgress(progress)
    raise ParameterError("progress", f"give a Progress (with .task(description, total)) or a callable "
                         f"(task, done, total), not a {type(progress).__name__}")


class NotebookProgress:
    """One progress bar per task, in a Jupyter notebook or a terminal: ``tqdm.auto``'s bars when tqdm is
    installed, else rich's live display (which renders in Jupyter too)."""

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            tqdm = None
        if tqdm is not None:
            with tqdm(total=total, desc=description) as bar:
                yield bar.update
            return
        from rich.progress import Progress as RichProgress

        with RichProgress() as bars:
            task_id = bars.add_task(description, total=total)
            yield lambda n: bars.advance(task_id, n)


def log_interval() -> float:
    """Seconds between two progress lines: ``$INFLUENCE_CLI_PROGRESS_SECONDS``, default 15; anything but
    a positive number is an :class:`~influence_cli.errors.InfluenceError`."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise InfluenceError(f"{INTERVAL_ENV}: must be a positive number of seconds, got {raw!r}")
    return value


def clock(seconds: float) -> str:
    """``h:mm:ss``."""
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(description: str, done: int, total: int, elapsed: float) -> str:
    """``train gradients: 1200/5000 (24%), 85.3/s, ETA 0:00:45`` (rate in the task's units per second)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = clock((total - done) / rate) if rate > 0 else "unknown"
    share = f" ({done / total:.0%})" if total else ""
    return f"{description}: {done}/{total}{share}, {rate:.3g}/s, ETA {eta}"


class LogProgress:
    """Plain lines for logs (CI, ``nohup``): while a task advances, a :func:`progress_line` (done/total,
    rate, ETA) once ``interval`` seconds (default :func:`log_interval`) have passed since the task started
    or since the last line, and ``<task>: <total> done in <s> s (<rate>/s)`` when it ends. Lines are
    checked for at each advance (each batch)."""

    def __init__(self, write: Callable[[str], None], interval: float | None = None) -> None:
        self.write = write
        self.interval = log_interval() if interval is None else interval

    @contextmanager
    def task(self, description: str, total: int) -> Iterator[Advance]:
        start = last = time.monotonic()
        done = 0

        def advance(n: int) -> None:
            nonlocal done, last
            done += n
            now = time.monotonic()
            if now - last >= self.interval:
                last = now
                self.write(progress_line(description, done, total, now - start))

        yield advance
        elapsed = time.monotonic() - start
        rate = f" ({done / elapsed:.3g}/s)" if elapsed > 0 else ""
        self.write(f"{description}: {total} done in {elapsed:.1f} s{rate}")


class TimedProgress:
    """A :class:`Progress` that passes each task on to ``inner`` (anything :func:`as_progress` takes) and
    records its wall time in ``timings``; ``seconds`` is the time since it was made."""

    def __init__(self, inner: ProgressLike | None = None) -> None:
        self.inner = as_progress(inner)
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
