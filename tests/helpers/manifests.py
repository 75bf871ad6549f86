"""Manifests for tests, all on the fake OpenAI backend (tests/fakebackend.py): documents, the
box's Node, the fake-backend Engine and LaunchSpec, a directory a test rewrites, and cleanup of
every backend recorded in a state directory. Every suite builds its manifests from these."""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path
from typing import Any

from reconciler.runtimes.base import LaunchSpec
from reconciler.runtimes.process import _proc_start
from tests.helpers.backend import FAKEBACKEND

REPO = Path(__file__).resolve().parents[2]


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


def node_doc(*, name: str = "box", **spec: Any) -> str:
    """The Node of a test box: the process runtime and no GPUs (fake backends need none);
    keyword arguments are more spec fields, camelCase, and win over those."""
    return doc("Node", name, {"runtime": "process", "gpus": "none", **spec})


def fake_backend_argv(*extra: str, model_name: str = "{name}") -> list[str]:
    """The fake backend's command line, as an Engine or a LaunchSpec holds it: the runtime fills
    ``{python}`` (this interpreter; ``python3`` in a container), ``{host}`` and ``{port}``."""
    return [
        "{python}",
        str(FAKEBACKEND),
        "--host",
        "{host}",
        "--port",
        "{port}",
        "--model-name",
        model_name,
        *extra,
    ]


def fake_engine_doc(
    name: str = "fake", *extra: str, health_path: str = "/health", **spec: Any
) -> str:
    """An Engine running the fake backend; ``extra`` are more fake-backend options, ``spec``
    more Engine fields (camelCase: ``image``, ``imagePull``)."""
    fields = {"command": fake_backend_argv(*extra), "healthPath": health_path, **spec}
    return doc("Engine", name, fields)


def fake_launch_spec(model: str = "m", *extra: str, **fields: Any) -> LaunchSpec:
    """What a runtime gets to start the fake backend for ``model`` (``extra``: more options);
    ``fields`` replace LaunchSpec fields."""
    values: dict[str, Any] = {
        "model": model,
        "spec_hash": "abcdef012345",
        "spec": {"args": list(extra)},
        "command": tuple(fake_backend_argv(*extra, model_name=model)),
        "env": {},
        "gpus": None,
        "health_path": "/health",
        "startup_timeout": 30.0,
        "generation": 1,
    }
    return LaunchSpec(**{**values, **fields})


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
