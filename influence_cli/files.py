"""Atomic files: every file is written to a uniquely named ``<name>.<token>.part`` file and renamed
into place, so a crash or Ctrl-C never leaves a half-written file behind and concurrent writers
into one folder never collide. Read-modify-write updates of shared files hold the folder's lock
(:func:`folder_lock`). Used by every stage that writes (reports, baselines, the demo)."""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from influence_cli.errors import InfluenceError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; concurrent commands into one folder may lose a section
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".influence-cli.lock"


def _is_main() -> bool:
    """Rank 0 of a torchrun job (or no torchrun), without importing torch when it is not loaded yet:
    then no process group can exist and the ``RANK`` variable decides."""
    if "torch" not in sys.modules:
        return os.environ.get("RANK", "0") in ("", "0")
    from influence_cli.distributed import is_main

    return is_main()


def _cannot_write(path: Path, exc: OSError) -> InfluenceError:
    return InfluenceError(f"{path}: cannot write the report: {exc.strerror or exc}")


def atomic_write(path: Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` via a uniquely named temporary file in the same folder and ``os.replace``.

    Under ``torchrun`` every rank computes the same reports and only rank 0 writes them (W ranks
    writing one file on a shared disk would race); other ranks return ``path`` unwritten.
    """
    if not _is_main():
        return path
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(6)}.part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise _cannot_write(path, exc) from None
    return path


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s exclusive lock (``flock`` on ``folder/.influence-cli.lock``, created and removed
    here) for a read-modify-write of a file shared by several commands.

    The holder removes the lock file before releasing it; a waiter that then gets the lock of a
    removed file retries on the current one. Without ``fcntl`` (Windows), or on ranks other than
    0 (which write nothing), it does not lock.
    """
    if fcntl is None or not _is_main():
        yield
        return
    path = folder / LOCK_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


def _acquire(path: Path) -> int:
    """An open descriptor of ``path`` holding its ``flock``, retried until the locked file is still ``path``."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_open_as(path, fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _is_open_as(path: Path, fd: int) -> bool:
    """Whether ``fd`` is the file now at ``path`` (not one that another holder removed)."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def write_json(path: Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON; a NaN or infinity in it is an :class:`InfluenceError` naming its key path."""
    try:
        text = json.dumps(obj, indent=1, allow_nan=False)
    except ValueError:
        where = _first_non_finite(obj)
        if where is None:
            raise
        raise InfluenceError(f"{path}: cannot write the report: {where[0] or 'the value'} is {where[1]}, "
                             "not a finite number") from None
    return atomic_write(path, text + "\n")


def _first_non_finite(obj: Any, where: str = "") -> tuple[str, float] | None:
    """(key path such as ``ranking[3].score``, value) of the first NaN or infinity in ``obj``, else ``None``."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (where, obj)
    if isinstance(obj, dict):
        items: Iterable[tuple[str, Any]] = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    return next((found for key, value in items if (found := _first_non_finite(value, key)) is not None), None)
