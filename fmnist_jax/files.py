"""Files never half-written: written beside their place, flushed to disk and renamed over it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def sync(path: str | Path) -> None:
    """Flushes the file or folder `path` to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: str | Path, content: bytes) -> None:
    """`content` in `path`, written beside it, flushed to disk and renamed: a reader sees the old
    file or the new one, never part of it, whatever interrupts the write."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # as an ordinary file, not mkstemp's 0o600
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sync(path.parent)
