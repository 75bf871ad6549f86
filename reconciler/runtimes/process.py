"""The process runtime: each backend is a local process group bound to 127.0.0.1.

Backends start in their own session (so they outlive a ``modelplane apply`` and survive a restart
of the service), with stdout and stderr in ``<stateDir>/logs/<model>.log``. What each instance is
(pid, process start time, port, labels, the spec it was started with) is written to
``<stateDir>/instances/<model>.json``: that record is how a later modelplane adopts running
backends instead of starting duplicates, and how it notices that one died. The process start time
guards against a recycled pid: a record whose pid now belongs to another process is "exited".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from .base import Instance, LaunchSpec, StartError, render_command
from .health import answers_200, wait_until_healthy

LOG_TAIL_LINES = 20


class ProcessRuntime:
    name = "process"

    def __init__(self, state_dir: Path, python: str = sys.executable) -> None:
        self.instances_dir = state_dir / "instances"
        self.logs_dir = state_dir / "logs"
        self.python = python
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # --- listing ----------------------------------------------------------------------------

    async def list(self) -> list[Instance]:
        if not self.instances_dir.is_dir():
            return []
        found = []
        for path in sorted(self.instances_dir.glob("*.json")):
            record = _read_record(path)
            if record is not None:
                found.append(self._instance(record))
        return found

    def _instance(self, record: dict[str, Any]) -> Instance:
        model = record["model"]
        alive = _alive(record["pid"], record.get("proc_start"))
        reason = None
        if not alive:
            child = self._children.get(model)
            code = None
            if child is not None:
                # /proc already shows it dead; its exit status may take a moment to be reapable.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    code = child.wait(timeout=0.5)
            if code is not None:
                reason = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
            else:
                reason = f"process {record['pid']} is gone"
        return Instance(
            model=model,
            runtime=self.name,
            ident=str(record["pid"]),
            state="running" if alive else "exited",
            labels=record.get("labels", {}),
            endpoint=f"http://127.0.0.1:{record['port']}",
            spec=record.get("spec"),
            gpus=tuple(record.get("gpus") or ()),
            started_at=record.get("started_at", 0.0),
            exit_reason=reason,
        )

    # --- starting ---------------------------------------------------------------------------

    async def start(self, spec: LaunchSpec) -> Instance:
        self.instances_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        values = {"host": "127.0.0.1", "port": str(port), "python": self.python}
        command = render_command(spec.command, values)
        env = {**os.environ, **spec.env}
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.gpus)) if spec.gpus else ""
        log_path = self.log_path(spec.model)
        with log_path.open("ab") as log:
            log.write(f"--- modelplane: {time.ctime()}: {' '.join(command)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise StartError(f"cannot run {command[0]!r}: {exc.strerror or exc}") from exc
        self._children[spec.model] = proc
        record = {
            "model": spec.model,
            "pid": proc.pid,
            "pgid": proc.pid,
            "proc_start": _proc_start(proc.pid),
            "port": port,
            "labels": spec.labels,
            "spec": dict(spec.spec),
            "gpus": list(spec.gpus or ()),
            "health_path": spec.health_path,
            "command": command,
            "started_at": time.time(),
        }
        _write_record(self._record_path(spec.model), record)
        try:
            await self._wait_healthy(spec, proc, port)
        except BaseException:
            self._kill_group(record, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=2)
            self._record_path(spec.model).unlink(missing_ok=True)
            raise
        return self._instance(record)

    async def _wait_healthy(
        self, spec: LaunchSpec, proc: subprocess.Popen[bytes], port: int
    ) -> None:
        def log_tail() -> Awaitable[str]:
            return self.logs(spec.model, LOG_TAIL_LINES)

        async def endpoint() -> str:
            code = proc.poll()
            if code is not None:
                how = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
                raise StartError(
                    f"{spec.model}: backend {how} before becoming ready", await log_tail()
                )
            return f"http://127.0.0.1:{port}"

        await wait_until_healthy(spec, endpoint, log_tail)

    # --- stopping ---------------------------------------------------------------------------

    async def stop(self, instance: Instance, grace: float = 10.0) -> None:
        path = self._record_path(instance.model)
        record = _read_record(path)
        if record is None or str(record["pid"]) != instance.ident:
            return  # already gone, or replaced by a newer instance
        if self._ours(record):
            self._kill_group(record, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while self._group_exists(record) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if self._group_exists(record):
                self._kill_group(record, signal.SIGKILL)
                for _ in range(40):
                    if not self._group_exists(record):
                        break
                    await asyncio.sleep(0.05)
        self._children.pop(instance.model, None)
        path.unlink(missing_ok=True)

    @staticmethod
    def _ours(record: dict[str, Any]) -> bool:
        """False when the leader's pid now belongs to another process (a recycled pid)."""
        start = _proc_start(record["pid"])
        return start is None or start == record.get("proc_start")

    def _kill_group(self, record: dict[str, Any], sig: int) -> None:
        if not self._ours(record):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record["pgid"], sig)

    def _group_exists(self, record: dict[str, Any]) -> bool:
        child = self._children.get(record["model"])
        if child is not None:
            child.poll()  # reap our own child so a zombie leader does not count
        try:
            os.killpg(record["pgid"], 0)
        except (ProcessLookupError, PermissionError):
            return False
        return _group_has_live_member(record["pgid"])

    # --- logs and health --------------------------------------------------------------------

    def log_path(self, model: str) -> Path:
        return self.logs_dir / f"{model}.log"

    async def logs(self, model: str, lines: int = 50) -> str:
        return tail(self.log_path(model), lines)

    async def healthy(self, instance: Instance) -> bool:
        record = _read_record(self._record_path(instance.model))
        if record is None or instance.endpoint is None:
            return False
        return await answers_200(instance.endpoint + record.get("health_path", "/"))

    def _record_path(self, model: str) -> Path:
        return self.instances_dir / f"{model}.json"


# --- small helpers ----------------------------------------------------------------------------


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file (reads at most the last 256 KiB)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * 1024))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "pid" in record else None


def _write_record(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(")") + 2 :].split()


def _proc_start(pid: int) -> str | None:
    fields = _stat_fields(pid)
    return fields[19] if fields else None  # field 22 of stat: start time in clock ticks


def _alive(pid: int, proc_start: str | None) -> bool:
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return proc_start is None or fields[19] == proc_start


def _group_has_live_member(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False
