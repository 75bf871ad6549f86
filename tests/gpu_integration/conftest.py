"""GPU placement and eviction end to end: the real ``modelplane run`` and CLI on the process
runtime, a static two-GPU ``Node.gpus`` (2 x 10 GiB, no reserve) and fake backends that declare
``vram``. Without NVML the static list is the inventory and bookkeeping is by claims alone,
which makes every placement here exact; on a box where NVML answers, the static list would
be cross-checked against the real GPUs, so these tests skip there (tests/gpus covers NVML).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.gpus.inventory import read_nvml
from tests.helpers.cli import CliResult, run_cli
from tests.helpers.manifests import ManifestDir, kill_recorded_backends
from tests.helpers.manifests import node_doc as box_node_doc

if read_nvml().error is None:
    pytest.skip(
        "NVML answers here: the static two-GPU inventory these tests assume would be "
        "cross-checked against the real GPUs",
        allow_module_level=True,
    )


def node_doc(queue_timeout: str = "60s", gpus: Any = None) -> str:
    """The box: process runtime, two static 10 GiB GPUs, no reserve, a quick resync."""
    if gpus is None:
        gpus = [{"index": 0, "memory": "10GiB"}, {"index": 1, "memory": "10GiB"}]
    return box_node_doc(
        gpus=gpus, vramReserve="0", resync="5s", proxy={"queueTimeout": queue_timeout}
    )


@pytest.fixture
def manifests(tmp_path: Path) -> ManifestDir:
    return ManifestDir(tmp_path / "manifests")


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """``MODELPLANE_STATE_DIR``; every backend recorded there is killed at teardown."""
    path = tmp_path / "state"
    monkeypatch.setenv("MODELPLANE_STATE_DIR", str(path))
    yield path
    kill_recorded_backends(path)


Cli = Callable[..., CliResult]


@pytest.fixture
def cli(tmp_path: Path, state_dir: Path) -> Cli:
    """``cli("apply", dir)``: ``python -m reconciler.cli apply dir`` in a new process."""

    def run(*args: str | Path, timeout: float = 60) -> CliResult:
        return run_cli(*args, cwd=tmp_path, state_dir=state_dir, timeout=timeout)

    return run


def backend_stats(endpoint: str) -> dict[str, Any]:
    """What the fake backend at ``endpoint`` reports about itself (env, argv, pid)."""
    with urllib.request.urlopen(f"{endpoint}/debug/stats", timeout=10) as response:
        return json.loads(response.read())
