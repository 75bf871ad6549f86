"""Fixtures for the foundation's tests: manifest directories, a fake-backend Engine, the CLI as a
real subprocess, a controller on a real SQLite file, and cleanup of every backend a test started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.controller import Controller
from reconciler.runtimes.process import _proc_start

REPO = Path(__file__).resolve().parents[2]
FAKEBACKEND = REPO / "tests" / "fakebackend.py"


# --- manifest text ------------------------------------------------------------------------------


def doc(kind: str, name: str, spec: dict[str, Any] | None = None) -> str:
    """One manifest document; ``spec`` is written as flow YAML (JSON is YAML) on one line."""
    text = f"apiVersion: modelplane/v1\nkind: {kind}\nmetadata: {{name: {name}}}\n"
    return text + (f"spec: {json.dumps(spec)}\n" if spec is not None else "")


def model_doc(name: str, engine: str = "fake", **spec: Any) -> str:
    """A Model on a local path source; keyword arguments are spec fields, camelCase."""
    return doc(
        "Model", name, {"source": {"path": f"/srv/models/{name}.gguf"}, "engine": engine, **spec}
    )


def fake_engine_doc(name: str = "fake", *extra: str, health_path: str = "/health") -> str:
    """An Engine running tests/fakebackend.py; ``extra`` are more fake-backend options."""
    command = [
        "{python}",
        str(FAKEBACKEND),
        "--host",
        "{host}",
        "--port",
        "{port}",
        "--model-name",
        "{name}",
        *extra,
    ]
    return doc("Engine", name, {"command": command, "healthPath": health_path})


def join(*docs: str) -> str:
    return "---\n".join(docs)


class ManifestDir:
    """A directory of manifest files that a test writes, rewrites and removes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def write(self, relpath: str, *docs: str) -> Path:
        """Write ``docs`` (joined with ``---``) to ``relpath``; plain text is dedented."""
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(join(*(textwrap.dedent(d) for d in docs)))
        return path

    def remove(self, relpath: str) -> None:
        (self.root / relpath).unlink()

    def path(self, relpath: str) -> str:
        """How the loader shows this file in errors (the directory as given, then the file)."""
        return str(self.root / relpath)


@pytest.fixture
def manifests(tmp_path: Path) -> ManifestDir:
    return ManifestDir(tmp_path / "manifests")


# --- state and cleanup --------------------------------------------------------------------------


def kill_recorded_backends(state_dir: Path) -> list[int]:
    """SIGKILL the process group of every instance record under ``state_dir``; their pids."""
    killed = []
    for path in (state_dir / "instances").glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _proc_start(record["pid"]) == record.get("proc_start"):
            try:
                os.killpg(record["pgid"], signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                continue
            killed.append(record["pid"])
    return killed


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


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


Cli = Callable[..., CliResult]


@pytest.fixture
def cli(tmp_path: Path, state_dir: Path) -> Cli:
    """``cli("apply", dir)`` runs ``python -m reconciler.cli apply dir`` in a new process."""

    def run(*args: str | Path, timeout: float = 60, env: dict[str, str] | None = None) -> CliResult:
        environment = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "MODELPLANE_STATE_DIR": str(state_dir),
            "COLUMNS": "200",  # rich wraps tables at the terminal's width
            **(env or {}),
        }
        done = subprocess.run(
            [sys.executable, "-m", "reconciler.cli", *map(str, args)],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

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
