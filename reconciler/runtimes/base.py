"""What every runtime (process, docker) offers the executor, and the types they share.

A runtime knows how to start, list, stop and read the logs of model backends. It never decides
*what* should run: that is the planner's job. Ownership is by labels: everything a runtime starts
carries ``modelplane.managed=true``, ``modelplane.model`` and ``modelplane.spec-hash``, and
``list()`` reports only instances that carry the managed label.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

MANAGED_LABEL = "modelplane.managed"
MODEL_LABEL = "modelplane.model"
SPEC_HASH_LABEL = "modelplane.spec-hash"
GENERATION_LABEL = "modelplane.generation"

InstanceState = Literal["starting", "running", "exited"]
Prepare = Callable[[Callable[[str], None]], Mapping[str, str]]


def managed_labels(model: str, spec_hash: str, generation: int) -> dict[str, str]:
    """The labels every instance modelplane starts carries."""
    return {
        MANAGED_LABEL: "true",
        MODEL_LABEL: model,
        SPEC_HASH_LABEL: spec_hash,
        GENERATION_LABEL: str(generation),
    }


@dataclass(frozen=True)
class Instance:
    """One backend as a runtime sees it (a process group or a container)."""

    model: str
    runtime: str
    ident: str  # pid for processes, container id for docker
    state: InstanceState
    labels: Mapping[str, str] = field(default_factory=dict)
    endpoint: str | None = None  # "http://127.0.0.1:PORT" once known
    spec: Mapping[str, Any] | None = None  # the effective spec it was started with (for diffs)
    gpus: tuple[int, ...] = ()
    started_at: float = 0.0
    exit_reason: str | None = None  # for state == "exited": exit code / signal and log tail
    node: str = ""  # the cluster node it runs on, by name ("" = this box)
    node_id: str = ""  # that node's id (the ray runtime)

    @property
    def managed(self) -> bool:
        return self.labels.get(MANAGED_LABEL) == "true"

    @property
    def spec_hash(self) -> str:
        return self.labels.get(SPEC_HASH_LABEL, "")


@dataclass(frozen=True)
class ContainerOptions:
    """Docker-only settings (``spec.container`` in a Model manifest)."""

    shm_size: int | None = None
    memory: int | None = None
    user: str | None = None
    volumes: tuple[str, ...] = ()
    extra_args: Mapping[str, Any] = field(default_factory=dict)
    network: Literal["host", "bridge"] = "host"
    image_pull: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"


@dataclass(frozen=True)
class NodeChoice:
    """Where placement put a model on a cluster, and the GPUs it asks of the cluster there."""

    node_id: str
    name: str
    num_gpus: float = 0.0


@dataclass(frozen=True)
class LaunchSpec:
    """Everything a runtime needs to start one model's backend.

    ``command`` may still hold the ``{host}`` and ``{port}`` placeholders: the runtime picks the
    port and fills them with :func:`render_command`. Every other placeholder is already filled.
    """

    model: str
    spec_hash: str
    spec: Mapping[str, Any]
    command: tuple[str, ...]
    env: Mapping[str, str]
    gpus: tuple[int, ...] | None  # None: no GPU at all ("none"); otherwise the device indices
    health_path: str
    startup_timeout: float
    generation: int = 0
    image: str | None = None
    mounts: tuple[str, ...] = ()  # host paths mounted read-only at the same path (docker)
    container: ContainerOptions = ContainerOptions()
    node: NodeChoice | None = None  # ray: the node placement chose (None: Ray chooses)
    # ray: work done where the backend runs, before its engine starts (fetching a hub source
    # into that node's cache); called with a callback for progress in words, it returns more
    # placeholder values ({model_path}, {model_dir}). A module-level function or a partial of
    # one, since it travels to the node by reference.
    prepare: Prepare | None = None

    @property
    def labels(self) -> dict[str, str]:
        return managed_labels(self.model, self.spec_hash, self.generation)


class StartError(Exception):
    """A backend did not become healthy: it exited early or timed out."""

    permanent = False  # True: retrying cannot help until the spec changes (missing image...)

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.log_tail = log_tail

    def __str__(self) -> str:
        if not self.log_tail:
            return self.message
        return f"{self.message}\n--- last log lines ---\n{self.log_tail}"


class RuntimeUnavailable(Exception):
    """The runtime itself cannot be reached (docker daemon down, state dir unreadable)."""


_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def render_command(template: tuple[str, ...] | list[str], values: Mapping[str, str]) -> list[str]:
    """Fill ``{name}`` placeholders; unknown placeholders are left as they are."""
    return [_PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), arg) for arg in template]


class Runtime(Protocol):
    """The interface the executor drives. All methods are safe to call concurrently."""

    name: str

    async def list(self) -> list[Instance]:
        """Managed instances, running or exited (an exited one is drift the planner repairs)."""
        ...

    async def start(self, spec: LaunchSpec) -> Instance:
        """Start and wait until ``health_path`` answers 200, or raise :class:`StartError`."""
        ...

    async def stop(self, instance: Instance, grace: float = 10.0) -> None:
        """Stop (SIGTERM, then SIGKILL after ``grace``) and forget the instance."""
        ...

    async def logs(self, model: str, lines: int = 50) -> str:
        """The last ``lines`` lines of the model's backend log."""
        ...

    async def healthy(self, instance: Instance) -> bool:
        """Does the instance's health endpoint answer 200 now?"""
        ...
