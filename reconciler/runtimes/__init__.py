"""Runtimes: where model backends run (local processes, docker containers, a Ray cluster)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.manifests.schema import RaySpec

from .base import Instance, Runtime, RuntimeUnavailable
from .process import ProcessRuntime

if TYPE_CHECKING:
    from .ray import RayRuntime

GpuProbe = Callable[[], list[dict[str, Any]]]


class RuntimeSet:
    """The runtimes of this node, created on first use (docker and Ray are only touched when
    needed). ``on_change`` callbacks run when a runtime notices something on its own (a Ray
    actor exited, the cluster connection dropped): the service's loop asks for a pass."""

    def __init__(
        self,
        state_dir: Path,
        docker_host: str | None = None,
        ray: RaySpec | None = None,
        gpu_probe: GpuProbe | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.docker_host = docker_host
        self.ray = ray  # Node.spec.ray: the cluster (followed when the Node manifest changes)
        self.gpu_probe = gpu_probe  # what a Ray node runs to report its GPUs
        self.on_pull: Callable[[Any], None] | None = None  # docker image pull progress
        self.on_change: list[Callable[[], None]] = []
        self._runtimes: dict[str, Runtime] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def get(self, name: str) -> Runtime:
        if name == "ray":
            return self.ray_runtime()
        if name not in self._runtimes:
            if name == "process":
                self._runtimes[name] = ProcessRuntime(self.state_dir)
            elif name == "docker":
                from .docker import DockerRuntime  # imported lazily: needs the docker SDK only

                self._runtimes[name] = DockerRuntime(self.docker_host, on_pull=self.on_pull)
            else:
                raise ValueError(f"unknown runtime {name!r}")
        return self._runtimes[name]

    def ray_runtime(self) -> RayRuntime:
        """The Ray runtime for ``Node.spec.ray`` as it is now: a changed address or namespace
        gets a runtime (and a driver process) of its own, and the old one is closed."""
        from .ray import RayRuntime

        if self.ray is None:
            raise RuntimeUnavailable("no Ray cluster configured (Node.spec.ray.address)")
        current = self._runtimes.get("ray")
        if isinstance(current, RayRuntime):
            if (current.address, current.namespace) == (self.ray.address, self.ray.namespace):
                return current
            self._close_later(current)
        runtime = RayRuntime(
            self.ray.address, self.ray.namespace, self.state_dir / "logs", self.gpu_probe
        )
        runtime.on_change = self.on_change  # shared: listeners added later are called too
        self._runtimes["ray"] = runtime
        return runtime

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

    async def close(self) -> None:
        """End what runtimes hold open (the Ray driver process)."""
        from .ray import RayRuntime

        for runtime in self._runtimes.values():
            if isinstance(runtime, RayRuntime):
                await runtime.close()
        await asyncio.gather(*self._closing, return_exceptions=True)

    def _close_later(self, runtime: RayRuntime) -> None:
        with contextlib.suppress(RuntimeError):  # no event loop: the driver exits with us
            task = asyncio.get_running_loop().create_task(runtime.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
