"""Runtimes: where model backends run (local processes or docker containers)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .base import Instance, Runtime, RuntimeUnavailable
from .process import ProcessRuntime


class RuntimeSet:
    """The runtimes of this node, created on first use (docker is only touched when needed)."""

    def __init__(self, state_dir: Path, docker_host: str | None = None) -> None:
        self.state_dir = state_dir
        self.docker_host = docker_host
        self.on_pull: Callable[[Any], None] | None = None  # docker image pull progress
        self._runtimes: dict[str, Runtime] = {}

    def get(self, name: str) -> Runtime:
        if name not in self._runtimes:
            if name == "process":
                self._runtimes[name] = ProcessRuntime(self.state_dir)
            elif name == "docker":
                from .docker import DockerRuntime  # imported lazily: needs the docker SDK only

                self._runtimes[name] = DockerRuntime(self.docker_host, on_pull=self.on_pull)
            else:
                raise ValueError(f"unknown runtime {name!r}")
        return self._runtimes[name]

    async def list(self, names: Iterable[str]) -> tuple[list[Instance], dict[str, str]]:
        """Instances of every named runtime, and the runtimes that could not be listed (why)."""
        found: list[Instance] = []
        unavailable: dict[str, str] = {}
        for name in sorted(set(names)):
            try:
                found += await self.get(name).list()
            except (RuntimeUnavailable, ImportError) as exc:
                unavailable[name] = str(exc)
        return found, unavailable
