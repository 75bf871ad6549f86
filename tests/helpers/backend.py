"""Start `tests/fakebackend.py` as a real process for a test, and stop it afterwards.

    with start_fake_backend("--tokens", "4", "--token-delay", "0.1") as backend:
        httpx.post(f"{backend.base_url}/chat/completions", json=...)
        assert backend.stats()["max_in_flight"] == 1

Without `port`, the backend binds port 0 and the helper reads the port it got from its startup
line, so concurrent test runs never race for a port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

FAKEBACKEND = Path(__file__).resolve().parent.parent / "fakebackend.py"
_LISTENING = re.compile(r"fakebackend: listening on http://([^:\s]+):(\d+)")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (prefer `--port 0` where the program reports its port)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def fake_backend_command(*args: str) -> list[str]:
    """The argv that runs the fake backend with this interpreter (for Engine manifests too)."""
    return [sys.executable, str(FAKEBACKEND), *args]


class FakeBackend:
    """A running fake backend process: its URL, its log, its /debug views, and stop()."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path, owns_log: bool) -> None:
        self.process = process
        self.log_path = log_path
        self._owns_log = owns_log
        self._final_log: str | None = None
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        """What an OpenAI client takes as `base_url`."""
        return f"{self.url}/v1"

    def log_text(self) -> str:
        """Everything the backend wrote to stdout/stderr so far."""
        if self._final_log is not None:
            return self._final_log
        return self.log_path.read_text(errors="replace")

    def get_json(self, path: str, timeout: float = 5.0) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return self.get_json("/debug/stats")

    def last_request(self) -> dict[str, Any] | None:
        """The last POST /v1/* request: method, path, headers (lower-case names), body."""
        return self.get_json("/debug/last-request")

    def health_status(self) -> int | None:
        """The status code of GET /health, or None when nothing answers."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not (match := _LISTENING.search(self.log_text())):
            self._check_alive_before(deadline, "to listen")
            time.sleep(0.02)
        self.host, self.port = match.group(1), int(match.group(2))

    def wait_healthy(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while self.health_status() != 200:
            self._check_alive_before(deadline, "to become healthy")
            time.sleep(0.02)

    def _check_alive_before(self, deadline: float, what: str) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"fake backend exited with {self.process.returncode} before it got {what}; "
                f"log:\n{self.log_text()}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(f"fake backend did not get {what}; log:\n{self.log_text()}")

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout)

    def stop(self, grace: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code (negative: signal)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._owns_log and self._final_log is None:
            self._final_log = self.log_path.read_text(errors="replace")
            self.log_path.unlink(missing_ok=True)
        return self.process.returncode

    def __enter__(self) -> FakeBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_fake_backend(
    *args: str,
    port: int | None = None,
    wait: Literal["healthy", "listening", "started"] = "healthy",
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    timeout: float = 15.0,
) -> FakeBackend:
    """Start the fake backend with these CLI args and wait until it is `wait`.

    `wait="listening"` returns once the port is bound (for --startup-delay / --fail-health);
    `"started"` returns at once (for --exit-immediately, --listen-delay with a given port).
    `env` is added to this process's environment. Use the result as a context manager, or call
    `stop()`.
    """
    owns_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="fakebackend-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    argv = fake_backend_command("--port", str(port or 0), *args)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # a ^C in pytest does not reach it; stop() does
        )
    backend = FakeBackend(process, log_path, owns_log)
    if port:
        backend.port = port
    try:
        if wait != "started":
            backend.wait_listening(timeout)
        if wait == "healthy":
            backend.wait_healthy(timeout)
    except BaseException:
        backend.stop(grace=1)
        raise
    return backend
