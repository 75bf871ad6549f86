"""One modelplane at a time per state directory: an exclusive ``flock`` on ``<stateDir>/lock``.

Two ``apply`` at once, or two ``run`` on one state directory, would each start the backends the
other does not know of (each holding VRAM on a GPU box) and ``down`` could not see them. ``run``,
``apply`` and ``reset-db`` hold the lock for as long as they run; read-only commands never take
it, so they never wait. The kernel drops the lock when the holder exits, however it exits, so a
crash leaves nothing to clean up. The file descriptor is not inherited (PEP 446): a backend
started by the holder does not keep the lock after modelplane exits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from . import run_record

LOCK_FILE = "lock"


class StateDirLocked(Exception):
    """Another process holds the state directory; ``str()`` names it and its pid."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        holder = f"pid {pid}" if pid else "pid unknown"
        message = (
            f"another modelplane ({holder}) holds {state_dir}: one `run` or `apply` at a time "
            "per state directory (read-only commands such as status still work)"
        )
        record = run_record.read(state_dir)
        if pid is not None and record is not None and record.pid == pid:
            message += f"; it is the modelplane run serving {record.url}, which applies every "
            message += "change to the manifests by itself"
        super().__init__(message)


class StateLock:
    """``with StateLock(state_dir):`` — raises :class:`StateDirLocked` at once, never waits."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirLocked(self.state_dir, holder(self.state_dir)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def holder(state_dir: Path) -> int | None:
    """The pid written by the process that holds (or last held) the lock."""
    with contextlib.suppress(OSError, ValueError):
        return int((state_dir / LOCK_FILE).read_text().strip())
    return None
