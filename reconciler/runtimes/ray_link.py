"""modelplane's end of the Ray driver process (:mod:`reconciler.runtimes.ray_driver`).

Requests and replies are pickled dicts framed by a 4-byte length, over the driver's stdin and
stdout: both ends are modelplane's own code on the same box. Each request has an id; the driver
answers in any order, and also sends unsolicited events (an actor exited). The link starts the
driver on first use, and again after it died; while the cluster cannot be reached, every call
raises :class:`RuntimeUnavailable` at once (with the last connection error), and a new
connection is tried after a short backoff, so the service notices the cluster's return.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .base import RuntimeUnavailable

log = logging.getLogger(__name__)

_LENGTH = struct.Struct(">I")
CONNECT_TIMEOUT = 60.0  # seconds for the driver to import Ray and connect
WAIT_CONNECT = 20.0  # seconds a call waits for a connection under way (the service's default)
RETRY_MIN, RETRY_MAX = 2.0, 16.0  # seconds between connection attempts while unreachable


def write_frame(stream: IO[bytes], message: Any) -> None:
    stream.write(_frame(message))
    stream.flush()


def read_frame(stream: IO[bytes]) -> Any | None:
    """The next message, or None at the end of the stream."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (size,) = _LENGTH.unpack(head)
    data = stream.read(size)
    return pickle.loads(data) if len(data) == size else None


class RayLink:
    """A driver process for one cluster address, started when needed; ``call`` is safe to use
    from many tasks at once."""

    def __init__(
        self,
        address: str,
        namespace: str,
        log_path: Path | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        wait_connect: float = WAIT_CONNECT,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.log_path = log_path
        self.on_event = on_event
        self.connect_timeout = connect_timeout
        self.wait_connect = wait_connect
        self.info: dict[str, Any] = {}  # the driver's hello: Ray's version
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""

    @property
    def connected(self) -> bool:
        return self._proc is not None and self._proc.returncode is None and bool(self.info)

    async def call(self, op: str, timeout: float, **args: Any) -> Any:
        """Run ``op`` in the driver; RuntimeUnavailable when the cluster cannot be reached or
        does not answer within ``timeout`` (the driver is then restarted)."""
        await self._ensure()
        assert self._proc is not None and self._proc.stdin is not None
        request_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._proc.stdin.write(_frame({"id": request_id, "op": op, "args": args}))
            await self._proc.stdin.drain()
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self._down(f"did not answer {op} within {timeout:.0f}s")
            await self._kill()
            raise RuntimeUnavailable(self._describe()) from None
        except (ConnectionError, BrokenPipeError):  # the driver died: its reader said why
            raise RuntimeUnavailable(self._describe()) from None
        finally:
            self._pending.pop(request_id, None)
        if not reply["ok"]:
            raise RuntimeError(reply["error"])
        return reply["value"]

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        await self._kill()

    # --- the driver process -----------------------------------------------------------------

    async def _ensure(self) -> None:
        """Connected, or RuntimeUnavailable. A connection is made in the background: a call
        waits for it (up to ``wait_connect``) only when the last attempt did not fail, so
        while the cluster is down calls fail at once instead of each waiting."""
        if self.connected:
            return
        if self._connecting is None or self._connecting.done():
            if time.monotonic() < self._retry_at:
                raise RuntimeUnavailable(self._describe())
            self._connecting = asyncio.create_task(self._connect())
            self._connecting.add_done_callback(_consume)
        wait = self.wait_connect if self._failures == 0 else 0.0
        try:
            await asyncio.wait_for(asyncio.shield(self._connecting), wait)
        except TimeoutError:
            if self._last_error:
                raise RuntimeUnavailable(self._describe()) from None
            raise RuntimeUnavailable(f"ray cluster at {self.address}: connecting") from None
        except RuntimeUnavailable:
            raise
        except Exception as exc:
            self._down(f"{type(exc).__name__}: {exc}")
            raise RuntimeUnavailable(self._describe()) from None

    async def _connect(self) -> None:
        try:
            await self._start_driver()
        except RuntimeUnavailable:
            raise
        except Exception as exc:  # the driver could not even be started
            await self._kill()
            self._down(f"{type(exc).__name__}: {exc}")
            raise RuntimeUnavailable(self._describe()) from None

    async def _start_driver(self) -> None:
        await self._kill()
        command = [sys.executable, "-m", "reconciler.runtimes.ray_driver"]
        # the driver runs this very copy of modelplane, wherever the working directory is
        package_root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                filter(None, [package_root, os.environ.get("PYTHONPATH")])
            ),
        }
        stderr: Any = asyncio.subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            stderr = self.log_path.open("ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *command,
                self.address,
                self.namespace,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env=env,
                limit=2**26,
            )
        finally:
            if stderr is not asyncio.subprocess.DEVNULL:
                stderr.close()
        assert self._proc.stdout is not None
        try:
            hello = await asyncio.wait_for(_read(self._proc.stdout), self.connect_timeout)
        except TimeoutError:
            hello = {"ok": False, "error": f"no connection within {self.connect_timeout:.0f}s"}
        if not hello or not hello.get("ok"):
            error = (hello or {}).get("error") or "the driver exited before connecting"
            await self._kill()
            self._down(error)
            raise RuntimeUnavailable(self._describe())
        self.info = hello["value"]
        self._failures = 0
        self._last_error = ""
        self._reader = asyncio.create_task(self._read_replies(self._proc))
        log.info("connected to the ray cluster at %s (ray %s)", self.address, self.info["ray"])

    async def _read_replies(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while (message := await _read(proc.stdout)) is not None:
            if "event" in message:
                if self.on_event is not None:
                    self.on_event(message)
                continue
            future = self._pending.get(message["id"])
            if future is not None and not future.done():
                future.set_result(message)
        code = await proc.wait()
        if proc is self._proc:
            where = f", see {self.log_path}" if self.log_path else ""
            self._down(f"connection lost (the driver exited with code {code}{where})")
            self.info = {}
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"driver exited with code {code}"))
        if self.on_event is not None:
            self.on_event({"event": "disconnected", "reason": self._last_error})

    async def _kill(self) -> None:
        proc, self._proc = self._proc, None
        self.info = {}
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()  # its reader sees the end of the stream and fails what waits

    def _down(self, error: str) -> None:
        self._last_error = error.strip().splitlines()[-1] if error.strip() else error
        self._failures += 1
        self._retry_at = time.monotonic() + min(RETRY_MAX, RETRY_MIN * 2 ** (self._failures - 1))

    def _describe(self) -> str:
        return f"ray cluster at {self.address} is unreachable: {self._last_error}"


def _consume(task: asyncio.Task[None]) -> None:
    """A connection attempt nobody awaits any more: its failure is already recorded."""
    if not task.cancelled():
        task.exception()


def _frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


async def _read(stream: asyncio.StreamReader) -> Any | None:
    try:
        head = await stream.readexactly(_LENGTH.size)
        (size,) = _LENGTH.unpack(head)
        return pickle.loads(await stream.readexactly(size))
    except asyncio.IncompleteReadError:
        return None
