"""Fixtures for the service tests: ``modelplane run`` as a real process over a manifest directory
of fake-backend models, the official ``openai`` client against it, and cleanup of every backend.

Starting ``modelplane run`` takes a few seconds on a small box, so tests that can share one
service do (module-scoped :func:`make_box` users); tests that restart, edit or break it start
their own.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.helpers.manifests import ManifestDir
from tests.helpers.manifests import node_doc as box_node_doc
from tests.helpers.service import ServiceProcess, cleanup, modelplane_command, service_env
from tests.helpers.service import start_service as _start_service


def node_doc(**spec: Any) -> str:
    """The test box's Node with a quick resync; ``spec`` adds fields."""
    return box_node_doc(name="test-box", **{"resync": "2s", **spec})


@dataclass
class Box:
    """One ``modelplane run`` with its manifest directory and state directory."""

    manifests: ManifestDir
    state_dir: Path
    api_key: str | None = None
    services: list[ServiceProcess] = field(default_factory=list)

    @property
    def svc(self) -> ServiceProcess:
        """The service started last."""
        return self.services[-1]

    def start(self, *args: str, **kwargs: Any) -> ServiceProcess:
        service = _start_service(
            self.manifests.root, self.state_dir, *args, api_key=self.api_key, **kwargs
        )
        self.services.append(service)
        return service

    def client(self, api_key: str | None = None, **kwargs: Any) -> openai.OpenAI:
        """The official client; no retries, so every status reaches the test."""
        return openai.OpenAI(
            base_url=self.svc.base_url,
            api_key=api_key or self.api_key or "unused",
            max_retries=0,
            timeout=60,
            **kwargs,
        )

    def async_client(self, api_key: str | None = None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.svc.base_url,
            api_key=api_key or self.api_key or "unused",
            max_retries=0,
            timeout=60,
        )

    def http(self, timeout: float = 60) -> httpx.Client:
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.svc.url, timeout=timeout, headers=headers)

    def backend(self, model: str) -> Backend:
        """The fake backend serving ``model`` now (from /api/status)."""
        entry = self.svc.model(model)
        assert entry.get("endpoint"), f"{model} has no endpoint: {entry}"
        return Backend(entry["endpoint"])

    def events(self, model: str, kinds: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        found = self.svc.events(model)
        return [e for e in found if not kinds or e["kind"] in kinds]

    def stop_all(self) -> None:
        for service in self.services:
            service.stop()
        cleanup(self.state_dir)


@dataclass(frozen=True)
class Backend:
    """A fake backend reached through the endpoint modelplane reports."""

    url: str

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        return self.get("/debug/stats")

    @property
    def pid(self) -> int:
        return int(self.stats()["pid"])

    def requests(self) -> list[dict[str, Any]]:
        return self.get("/debug/requests")


MakeBox = Callable[..., Box]


def _make(root: Path, docs: dict[str, str], api_key: str | None) -> Box:
    manifests = ManifestDir(root / "manifests")
    for relpath, text in docs.items():
        manifests.write(relpath, text)
    return Box(manifests, root / "state", api_key)


@pytest.fixture
def make_box(tmp_path: Path) -> Iterator[MakeBox]:
    """``make_box({"file.yaml": text, ...}, api_key=None)``: a manifest directory (not started)."""
    boxes: list[Box] = []

    def make(docs: dict[str, str], api_key: str | None = None) -> Box:
        box = _make(tmp_path / f"box{len(boxes)}", docs, api_key)
        boxes.append(box)
        return box

    yield make
    for box in boxes:
        box.stop_all()


def module_box(
    factory: pytest.TempPathFactory, docs: dict[str, str], *args: str, api_key: str | None = None
) -> Iterator[Box]:
    """A started box shared by a module's tests (use from a module-scoped fixture)."""
    box = _make(factory.mktemp("box"), docs, api_key)
    try:
        box.start(*args)
        yield box
    finally:
        box.stop_all()


def hash_key(key: str) -> str:
    """The sha256 that ``modelplane hash-key`` prints for ``key`` (read from stdin)."""
    result = subprocess.run(
        modelplane_command("hash-key"),
        input=key + "\n",
        capture_output=True,
        text=True,
        env=service_env(Path("/nonexistent")),
        check=True,
    )
    return result.stdout.strip()


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy; its last value otherwise fails."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not {what or 'true'} after {timeout}s: {value!r}")
