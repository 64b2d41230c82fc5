"""One writer per folder: an exclusive `flock` on a lock file beside the folder.

Every command that writes a workdir, a release or an evaluation folder holds `exclusive(folder)`
while it writes. The lock file, `.<name>.lock` beside the folder (beside, so that a release
replaced by a rename keeps its lock), holds the holder's PID, command and start time; a second
writer is refused at once with one line naming them (exit 2) and the first goes on untouched. The
kernel drops the lock of a process that dies however it dies, so a lock file a killed process left
behind is simply taken over. The holder removes the file when it is done; a writer that locked a
file removed meanwhile locks the new one instead.

  with locking.exclusive(workdir):
      ...  # write
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from fmnist_jax.errors import UserError

HOLDER_WAIT_SECONDS = 1.0  # how long to wait for a new holder to write who it is


class Locked(UserError):
    """Another process is writing the folder."""


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder).absolute()
    return folder.with_name(f".{folder.name}.lock")


def _holder(fd: int) -> str:
    """Who holds the lock whose file is open as `fd`, as its holder wrote it."""
    deadline = time.monotonic() + HOLDER_WAIT_SECONDS
    while True:
        text = os.pread(fd, 1 << 16, 0).decode(errors="replace")
        try:
            holder = json.loads(text)
            return f"PID {holder['pid']} ({holder['command']}), since {holder['since']}"
        except (ValueError, KeyError, TypeError):
            if time.monotonic() > deadline:
                return "a process that did not say who it is"
            time.sleep(0.02)


def _open(path: Path, folder: Path) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"{folder} cannot be locked for writing: {path} ({e.strerror}); choose "
                        f"a folder you can write to") from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def acquire(folder: str | Path) -> int:
    """The open lock file of `folder`, locked; Locked (one line, naming the holder) if another
    process holds it."""
    folder = Path(folder)
    path = lock_path(folder)
    while True:
        fd = _open(path, folder)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise Locked(f"{folder} is being written by another process: {holder}; wait for it "
                         f"to finish (or stop it), or choose another folder") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # its holder removed it after we opened it: lock the file there now
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    me = {"pid": os.getpid(), "command": shlex.join([Path(sys.executable).name, *sys.argv]),
          "since": stamp}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    return fd


def release(folder: str | Path, fd: int) -> None:
    """Removes the lock file while holding it, then unlocks."""
    lock_path(folder).unlink(missing_ok=True)
    os.close(fd)


@contextlib.contextmanager
def exclusive(folder: str | Path, enabled: bool = True) -> Iterator[None]:
    """Holds `folder`'s lock (nothing when not `enabled`: a process that does not write it)."""
    if not enabled:
        yield
        return
    fd = acquire(folder)
    try:
        yield
    finally:
        release(folder, fd)
