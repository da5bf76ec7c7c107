"""``loading/inputs.py``: a file's content hash is read once while the file is unchanged, and any
rewrite (even one that puts size and modification time back) is seen."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from influence_cli.loading import inputs


def test_a_file_is_hashed_once_until_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"a" * 1000)
    before = inputs._sha256_of.cache_info().misses
    assert inputs.file_sha256(path) == inputs.file_sha256(path) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert inputs._sha256_of.cache_info().misses == before + 1  # the second call reads nothing
    stat = path.stat()
    path.write_bytes(b"b" * 1000)  # same size; the modification time is put back
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert inputs.file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest()
