"""A box (manifests, state, cache) that downloads from a generated hub through the real CLI and
``modelplane run``: the subprocesses get ``HF_ENDPOINT`` pointing at the mirror over the test's
repos, so every download goes through huggingface_hub over a real socket."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.weights import MirrorServer
from tests.helpers.cli import CliResult, run_cli
from tests.helpers.manifests import (
    REPO,
    ManifestDir,
    doc,
    fake_engine_doc,
    kill_recorded_backends,
    node_doc,
)
from tests.helpers.service import ServiceProcess, start_service
from tests.weights.conftest import gguf_bytes  # noqa: F401  (a fixture used here)
from tests.weights.hubgen import HubRepos

#: Unset in every subprocess unless a test sets them: the developer's own environment must not
#: reach the hub under test (or the real one).
HUB_ENV = ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_TOKEN")


@dataclass
class Box:
    """One modelplane box: its manifests, state directory and weights cache (``cacheDir``)."""

    root: Path
    hub_url: str
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.manifests = ManifestDir(self.root / "manifests")
        self.state = self.root / "state"
        self.cache = self.root / "hf"

    @property
    def hub_cache(self) -> Path:
        return self.cache / "hub"

    def write(self, *models: str, **node: Any) -> None:
        """The Node (cacheDir here), the fake engine (``--model {model_path}``) and ``models``."""
        self.manifests.write("node.yaml", node_doc(cacheDir=str(self.cache), **node))
        self.manifests.write("engine.yaml", fake_engine_doc("fake", "--model", "{model_path}"))
        self.manifests.write("models.yaml", *models)

    def environ(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in HUB_ENV}
        env.update(
            PYTHONPATH=str(REPO),
            MODELPLANE_STATE_DIR=str(self.state),
            COLUMNS="250",
            HF_ENDPOINT=self.hub_url,
        )
        env.update(self.env)
        env.update(extra or {})
        return env

    def cli(self, *args: str | Path, env: dict[str, str] | None = None) -> CliResult:
        return run_cli(*args, cwd=self.root, env=self.environ(env), timeout=120, inherit=False)

    def service(self, env: dict[str, str] | None = None) -> ServiceProcess:
        extra = self.environ(env)
        for name in HUB_ENV:  # start_service starts from this process's environment
            extra.setdefault(name, "")
        return start_service(self.manifests.root, self.state, env=extra)

    def status(self) -> dict[str, dict[str, Any]]:
        """``modelplane status --json`` by model."""
        done = self.cli("status", "--dir", self.manifests.root, "--json")
        assert done.code == 0, done.output
        return {m["name"]: m for m in done.json()["models"]}

    def events(self, model: str | None = None) -> str:
        args = ["events", "--dir", self.manifests.root, "-n", "500"]
        done = self.cli(*args, *(["--model", model] if model else []))
        assert done.code == 0, done.output
        return done.stdout


def hub_model(name: str, repo: str, files: list[str] | None = None, **spec: Any) -> str:
    """A Model on a hub source, served by the fake engine on the CPU."""
    hf: dict[str, Any] = {"repo": repo, "revision": spec.pop("revision", "main")}
    if files is not None:
        hf["files"] = files
    source: dict[str, Any] = {"huggingface": hf}
    if "prefetch" in spec:
        source["prefetch"] = spec.pop("prefetch")
    return doc("Model", name, {"source": source, "engine": "fake", "gpus": "none", **spec})


def backend_stats(endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}/debug/stats", timeout=10) as resp:
        return json.loads(resp.read())


def file_gets(server: MirrorServer, needle: str = "") -> list[str]:
    """Paths of the file bodies (GET /resolve/) the mirror served."""
    return [
        r.path
        for r in server.requests
        if r.method == "GET" and "/resolve/" in r.path and needle in r.path
    ]


@pytest.fixture
def repos(tmp_path: Path) -> HubRepos:
    return HubRepos(tmp_path / "hubrepos")


@pytest.fixture
def hub(repos: HubRepos) -> Iterator[MirrorServer]:
    with MirrorServer(repos.root, record=True) as server:
        yield server
        for hold in server.holds:
            hold.release.set()


@pytest.fixture
def box(tmp_path: Path, hub: MirrorServer) -> Iterator[Box]:
    """A box; every backend it started is killed at teardown, even after a failure."""
    made = Box(tmp_path / "box", hub.url)
    made.root.mkdir(exist_ok=True)
    yield made
    kill_recorded_backends(made.state)
