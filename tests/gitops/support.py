"""Helpers for the GitOps tests: a box (manifests + state directory) and waiting for a condition."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers.manifests import REPO, ManifestDir, fake_engine_doc
from tests.helpers.manifests import node_doc as box_node_doc
from tests.helpers.service import ServiceProcess, modelplane_command, service_env

T = TypeVar("T")


def wait_for(check: Callable[[], T], what: str, timeout: float = 30.0, svc: Any = None) -> T:
    """Poll ``check`` until it returns something truthy; its value."""
    deadline = time.monotonic() + timeout
    value: T | None = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    log = svc.log_text()[-4000:] if svc is not None else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value!r})\n{log}")


def node_doc(**spec: Any) -> str:
    """The Node of a test box: a fast resync unless told otherwise."""
    return box_node_doc(name="test-box", **{"resync": "1s", **spec})


def write_box(manifests: ManifestDir, **node: Any) -> None:
    """node.yaml and the fake engine (the models are each test's own)."""
    manifests.write("node.yaml", node_doc(**node))
    manifests.write("engine.yaml", fake_engine_doc())


def backend_pid(svc: ServiceProcess, model: str) -> int:
    """The pid of the backend serving ``model`` now (asked from the backend itself)."""
    endpoint = svc.model(model)["endpoint"]
    assert endpoint, f"{model} has no endpoint: {svc.model(model)}"
    with urllib.request.urlopen(endpoint.rstrip("/") + "/debug/stats", timeout=5) as resp:
        return int(json.loads(resp.read())["pid"])


def try_backend_pid(svc: ServiceProcess, model: str) -> int | None:
    """:func:`backend_pid`, or None while the model has no answering backend."""
    try:
        return backend_pid(svc, model)
    except (AssertionError, OSError):
        return None


def kinds(svc: ServiceProcess, model: str | None = None) -> list[str]:
    return [e["kind"] for e in svc.events(model)]


def state_of(path: Path) -> Path:
    return path / "state"


def cli(state: Path, *args: str | Path, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``modelplane ARGS`` as a new process, with the test's state directory."""
    return subprocess.run(
        modelplane_command(*args),
        env=service_env(state, {"COLUMNS": "200"}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
