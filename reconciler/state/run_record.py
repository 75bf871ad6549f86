"""How a command finds the running ``modelplane run``, as ``docker`` finds its daemon.

``run`` writes ``run.json`` (its pid, the URL it serves, its manifest directory) into its state
directory once it listens, and marks it stopped when it stops (the manifest directory stays known
to commands that read the database then); a per-user pointer remembers the state directory of
the last ``run``, so ``modelplane status`` works from any folder. When the Node has
``apiKeys``, the admin API needs a key: ``run`` writes a fresh random one (``admin-token``, mode
0600) beside ``run.json`` for the commands of users who may read the state directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from . import paths

RUN_FILE = "run.json"
TOKEN_FILE = "admin-token"
LAST_RUN_FILE = "last-run"  # in paths.user_dir(): the state directory of the last run


@dataclass(frozen=True)
class RunRecord:
    pid: int
    url: str  # where its admin API answers (loopback when it listens on every address)
    manifests: str
    state_dir: str
    started: float
    stopped: bool = False

    def alive(self) -> bool:
        """Whether it still runs (a file left by a crash names a process that is gone)."""
        return not self.stopped and process_alive(self.pid)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def connect_url(host: str, port: int) -> str:
    """The URL a local client uses for a server listening on ``host``."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def write(state_dir: Path, url: str, manifests: Path) -> RunRecord:
    record = RunRecord(os.getpid(), url, str(manifests), str(state_dir), time.time())
    _write_file(state_dir / RUN_FILE, json.dumps(asdict(record)), 0o644)
    with contextlib.suppress(OSError):  # a read-only home must not stop the service
        _write_file(paths.user_dir() / LAST_RUN_FILE, str(state_dir) + "\n", 0o644)
    return record


def last(state_dir: Path) -> RunRecord | None:
    """The record of the last ``run`` on ``state_dir``, up or not."""
    try:
        return RunRecord(**json.loads((state_dir / RUN_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def read(state_dir: Path) -> RunRecord | None:
    """The record of the ``run`` using ``state_dir``, if one is up."""
    record = last(state_dir)
    return record if record is not None and record.alive() else None


def mark_stopped(state_dir: Path) -> None:
    """At exit (this process's own record only): stopped, and its admin token gone."""
    current = last(state_dir)
    if current is None or current.pid != os.getpid():
        return
    with contextlib.suppress(OSError):
        _write_file(state_dir / RUN_FILE, json.dumps({**asdict(current), "stopped": True}), 0o644)
    with contextlib.suppress(OSError):
        (state_dir / TOKEN_FILE).unlink()


def last_state_dir() -> Path | None:
    """The state directory of the last ``run`` this user started, if recorded."""
    try:
        text = (paths.user_dir() / LAST_RUN_FILE).read_text().strip()
    except OSError:
        return None
    return Path(text) if text else None


def new_admin_token(state_dir: Path) -> str:
    token = secrets.token_urlsafe(32)
    _write_file(state_dir / TOKEN_FILE, token + "\n", 0o600)
    return token


def admin_token(state_dir: Path) -> str | None:
    with contextlib.suppress(OSError):
        return (state_dir / TOKEN_FILE).read_text().strip() or None
    return None


def _write_file(path: Path, text: str, mode: int) -> None:
    """Atomically, with ``mode`` from the start (a token is never readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
