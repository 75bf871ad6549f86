"""Fixtures: a generated hub served by the mirror, a fresh cache, settings pointing at the hub."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.weights import HubSettings, MirrorServer

from .hubgen import HubRepos

MAKE_TEST_GGUF = Path("/work/shared/tools/make_test_gguf.py")
#: the shape the session's GGUF is made with (tests compare the metadata read back)
GGUF_SHAPE = {"embd": 32, "layers": 2, "ff": 64, "heads": 4, "kv_heads": 2, "ctx": 2048}


@pytest.fixture(scope="session")
def gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real (tiny, random) llama GGUF made by the shared tool."""
    out = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    args = [f"--{k.replace('_', '-')}={v}" for k, v in GGUF_SHAPE.items()]
    subprocess.run(
        [sys.executable, str(MAKE_TEST_GGUF), str(out), *args], check=True, capture_output=True
    )
    return out.read_bytes()


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
