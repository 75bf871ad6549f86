"""Run ``modelplane run DIR`` as a real process for a test, talk to it, and stop it.

    with start_service(manifest_dir, state_dir) as svc:
        client = openai.OpenAI(base_url=svc.base_url, api_key="x")
        ...
        assert svc.status()["models"][0]["phase"] == "Ready"

The service listens on a port picked for the test; its log (stderr) is kept in a file that a
failed test prints. ``stop()`` sends SIGTERM (the graceful path) and returns the exit code;
the backends keep running (adoption), so tests call ``down()`` or use the state_dir cleanup.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.helpers.backend import free_port
from tests.helpers.manifests import REPO, kill_recorded_backends


class ServiceProcess:
    def __init__(
        self, process: subprocess.Popen[bytes], port: int, log_path: Path, state_dir: Path
    ) -> None:
        self.process = process
        self.port = port
        self.log_path = log_path
        self.state_dir = state_dir
        self.api_key: str | None = None  # sent as a Bearer token by request() when set

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """For the openai client."""
        return self.url + "/v1"

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """(status, decoded JSON or text) of one request; HTTP errors are returned, not raised."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("content-type", "application/json")
        if self.api_key:
            req.add_header("authorization", f"Bearer {self.api_key}")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        status, body = self.request("GET", path)
        assert status == 200, f"GET {path}: {status} {body}\n{self.log_text()[-3000:]}"
        return body

    def status(self) -> dict[str, Any]:
        return self.get("/api/status")

    def model(self, name: str) -> dict[str, Any]:
        """This model's entry in /api/status."""
        models = self.status()["models"]
        entries = models.values() if isinstance(models, dict) else models
        return next(m for m in entries if m["name"] == name)

    def wait_phase(self, name: str, phase: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        entry: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                entry = self.model(name)
            except StopIteration:
                entry = {}
            if entry.get("phase") == phase:
                return entry
            time.sleep(0.1)
        raise AssertionError(
            f"{name} not {phase} after {timeout}s: {entry}\n{self.log_text()[-3000:]}"
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"modelplane run exited {self.process.returncode}:\n{self.log_text()}"
                )
            try:
                if self.request("GET", "/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"modelplane run not ready after {timeout}s:\n{self.log_text()}")

    def events(self, model: str | None = None) -> list[dict[str, Any]]:
        query = f"?model={model}&limit=500" if model else "?limit=500"
        body = self.get("/api/events" + query)
        return body["events"] if isinstance(body, dict) else body

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc is not None:
            sys.stderr.write(f"--- modelplane run log ---\n{self.log_text()[-6000:]}\n")


def modelplane_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "reconciler.cli", *map(str, args)]


def service_env(state_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "MODELPLANE_STATE_DIR": str(state_dir), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


def start_service(
    manifest_dir: Path,
    state_dir: Path,
    *args: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
    timeout: float = 30.0,
    api_key: str | None = None,
    prefix: Sequence[str] = (),
) -> ServiceProcess:
    """Start ``modelplane run manifest_dir`` on 127.0.0.1 and wait for /readyz (``wait``).
    ``api_key``: sent with the helper's own requests (for a Node with apiKeys); ``prefix``: a
    command it runs under (tests/helpers/privileges.py)."""
    port = port or free_port()
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir.parent / f"modelplane-run-{port}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [
                *prefix,
                *modelplane_command("run", manifest_dir, "--listen", f"127.0.0.1:{port}", *args),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=service_env(state_dir, env),
            cwd=REPO,
        )
    service = ServiceProcess(process, port, log_path, state_dir)
    service.api_key = api_key
    if wait:
        try:
            service.wait_ready(timeout)
        except BaseException:
            service.stop(signal.SIGKILL)
            raise
    return service


def cleanup(state_dir: Path) -> None:
    """Kill every backend recorded in ``state_dir`` (what a test's teardown calls)."""
    kill_recorded_backends(state_dir)
