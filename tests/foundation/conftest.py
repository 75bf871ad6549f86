"""Fixtures for the foundation's tests: manifest directories, a fake-backend Engine, the CLI as a
real subprocess, a controller on a real SQLite file, and cleanup of every backend a test started.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.control.controller import Controller
from tests.helpers.backend import FAKEBACKEND  # noqa: F401  (re-exported for the tests here)
from tests.helpers.cli import CliResult, run_cli
from tests.helpers.manifests import (  # noqa: F401  (re-exported for the tests here)
    REPO,
    ManifestDir,
    doc,
    fake_engine_doc,
    fake_launch_spec,
    join,
    kill_recorded_backends,
    model_doc,
)


@pytest.fixture
def manifests(tmp_path: Path) -> ManifestDir:
    return ManifestDir(tmp_path / "manifests")


# --- state and cleanup --------------------------------------------------------------------------


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The state directory (``MODELPLANE_STATE_DIR``); backends still recorded there are killed
    at teardown, so no test leaves a process behind even when it fails half-way."""
    path = tmp_path / "state"
    monkeypatch.setenv("MODELPLANE_STATE_DIR", str(path))
    yield path
    kill_recorded_backends(path)


@pytest.fixture
async def controller(manifests: ManifestDir, state_dir: Path) -> AsyncIterator[Controller]:
    ctl = await Controller.open(manifests.root, state_dir)
    yield ctl
    await ctl.close()


# --- the CLI as a real subprocess ---------------------------------------------------------------


Cli = Callable[..., CliResult]


@pytest.fixture
def cli(tmp_path: Path, state_dir: Path) -> Cli:
    """``cli("apply", dir)`` runs ``python -m reconciler.cli apply dir`` in a new process
    (``stdin=``, ``prefix=``: see :func:`run_cli`)."""

    def run(
        *args: str | Path, timeout: float = 60, env: dict[str, str] | None = None, **options: Any
    ) -> CliResult:
        return run_cli(
            *args, cwd=tmp_path, state_dir=state_dir, env=env, timeout=timeout, **options
        )

    return run


# --- small waits --------------------------------------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail the test after ``timeout`` (generous, not a bound)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def group_alive(pgid: int) -> bool:
    """True while any non-zombie process is in process group ``pgid``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def records(state_dir: Path) -> dict[str, dict[str, Any]]:
    """The process runtime's instance records, by model."""
    found = {}
    for path in (state_dir / "instances").glob("*.json"):
        record = json.loads(path.read_text())
        found[record["model"]] = record
    return found
