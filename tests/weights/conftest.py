"""Fixtures: a generated hub served by the mirror, a fresh cache, settings pointing at the hub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.weights import HubSettings, MirrorServer
from tests.helpers.gguf import GgufShape, write_test_gguf

from .hubgen import HubRepos

#: the shape the session's GGUF is made with (tests compare the metadata read back)
GGUF_SHAPE = GgufShape(embd=32, layers=2, ff=64, heads=4, kv_heads=2, ctx=2048)


@pytest.fixture(scope="session")
def gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real (tiny, random) llama GGUF."""
    return write_test_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", GGUF_SHAPE).read_bytes()


@pytest.fixture
def repos(tmp_path: Path) -> HubRepos:
    return HubRepos(tmp_path / "hub")


@pytest.fixture
def hub(repos: HubRepos) -> Iterator[MirrorServer]:
    """The mirror over the generated repos, recording every request."""
    with MirrorServer(repos.root, record=True) as server:
        yield server


@pytest.fixture
def settings(hub: MirrorServer) -> HubSettings:
    return HubSettings(endpoint=hub.url)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def gets(server: MirrorServer, needle: str) -> list:
    """The file downloads (GET /resolve/) the server saw whose path contains ``needle``."""
    return [
        r
        for r in server.requests
        if r.method == "GET" and "/resolve/" in r.path and needle in r.path
    ]
