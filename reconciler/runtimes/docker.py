"""Models as labelled docker containers: the docker runtime behind the ``Runtime`` protocol.

Each model runs in one container named ``modelplane-<model>``. Ownership is by labels only: the
managed labels of :class:`LaunchSpec` plus a few of this runtime's own (the spec as JSON, so a later
diff can say which fields changed, and the port, so a restarted modelplane adopts the container and
its endpoint without restarting it). Nothing without ``modelplane.managed=true`` is ever touched,
whatever its name.

The docker SDK is synchronous; every call runs in a worker thread (``asyncio.to_thread``). A daemon
that cannot be reached raises :class:`RuntimeUnavailable` and the client is rebuilt on the next
call, so the runtime recovers by itself when the daemon comes back.

Networking: ``host`` (the default) runs the engine in the host's network namespace bound to
127.0.0.1 on a port this runtime allocates; ``bridge`` attaches the container to a user-defined
bridge network and publishes its port on 127.0.0.1 only (docker picks the host port).

``start()`` either returns a healthy instance or raises :class:`StartError` and leaves no container
behind (the error carries the container's last log lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import docker
import docker.errors
import requests.exceptions
from docker.types import DeviceRequest, Mount

from .base import (
    MANAGED_LABEL,
    MODEL_LABEL,
    Instance,
    InstanceState,
    LaunchSpec,
    RuntimeUnavailable,
    StartError,
    render_command,
)
from .health import answers_200, wait_until_healthy

log = logging.getLogger(__name__)

NAME_PREFIX = "modelplane-"
SPEC_LABEL = "modelplane.spec"  # the effective spec as JSON (diffs say which fields changed)
PORT_LABEL = "modelplane.port"  # host networking: the port the engine listens on (adoption)
NETWORK_LABEL = "modelplane.network"  # "host" or "bridge"
GPUS_LABEL = "modelplane.gpus"  # "0,1"; empty for none
HEALTH_LABEL = "modelplane.health-path"  # what healthy() polls after an adoption
BRIDGE_PORT = 8080  # the engine's port inside the container on a bridge network
CONTAINER_PYTHON = "python3"  # ``{python}`` in a container: the image's interpreter, not ours

# create() arguments modelplane owns: extraArgs may not change them (ownership, reachability)
RESERVED_ARGS = frozenset(
    {"image", "command", "entrypoint", "name", "labels", "network", "network_mode", "ports"}
)

T = TypeVar("T")


class PermanentStartError(StartError):
    """A start that cannot succeed until the spec changes: back off, do not retry in a loop."""

    permanent = True


class ImageNotPresent(PermanentStartError):
    """``imagePull: Never`` and the image is not on this box."""


@dataclass(frozen=True)
class PullProgress:
    """How far an image pull has got (reported to the ``on_pull`` callback)."""

    model: str
    image: str
    status: str  # "pulling", "done", "failed", "using local image"
    layers_done: int = 0
    layers_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    message: str = ""


PullCallback = Callable[[PullProgress], None]


# --- pure pieces -------------------------------------------------------------------------------


def container_name(model: str) -> str:
    return NAME_PREFIX + model


def container_kwargs(spec: LaunchSpec, port: int, bridge_network: str) -> dict[str, Any]:
    """The ``containers.create`` arguments for a spec (pure, so it is unit-tested without docker).

    ``port`` is the host port for host networking; on a bridge the engine listens on
    :data:`BRIDGE_PORT` inside and docker publishes it on a free 127.0.0.1 port.
    """
    if not spec.image:
        raise PermanentStartError(f"model {spec.model}: the docker runtime needs an engine image")
    options = spec.container
    bridge = options.network == "bridge"
    host, inner_port = ("0.0.0.0", BRIDGE_PORT) if bridge else ("127.0.0.1", port)
    values = {"host": host, "port": str(inner_port), "python": CONTAINER_PYTHON}
    argv = render_command(spec.command, values)
    if not argv:
        raise PermanentStartError(f"model {spec.model}: the engine has no command")
    labels = {
        **spec.labels,
        SPEC_LABEL: json.dumps(spec.spec, sort_keys=True, default=str),
        NETWORK_LABEL: options.network,
        GPUS_LABEL: ",".join(str(g) for g in spec.gpus or ()),
        HEALTH_LABEL: spec.health_path,
    }
    kwargs: dict[str, Any] = {
        "image": spec.image,
        # the manifest's command is the whole argv, as for the process runtime
        "entrypoint": argv[:1],
        "command": argv[1:],
        "name": container_name(spec.model),
        "labels": labels,
        "environment": dict(spec.env),
        "init": True,  # PID 1 forwards SIGTERM and reaps zombies
        # an image's own HEALTHCHECK probes its default port (llama.cpp: 8080), not the one
        # modelplane assigned, and would mark a healthy backend "unhealthy"; modelplane probes
        # health itself (extraArgs may set one anyway)
        "healthcheck": {"test": ["NONE"]},
        "mounts": [Mount(path, path, type="bind", read_only=True) for path in spec.mounts],
    }
    if bridge:
        kwargs["network"] = bridge_network
        kwargs["ports"] = {f"{BRIDGE_PORT}/tcp": ("127.0.0.1", None)}
    else:
        kwargs["network_mode"] = "host"
        labels[PORT_LABEL] = str(port)
    if spec.gpus:
        ids = [str(g) for g in spec.gpus]
        kwargs["device_requests"] = [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]
    if options.shm_size is not None:
        kwargs["shm_size"] = options.shm_size
    if options.memory is not None:
        kwargs["mem_limit"] = options.memory
    if options.user is not None:
        kwargs["user"] = options.user
    if options.volumes:
        kwargs["volumes"] = list(options.volumes)
    clash = sorted(RESERVED_ARGS & set(options.extra_args))
    if clash:
        raise PermanentStartError(
            f"model {spec.model}: spec.container.extraArgs may not set {', '.join(clash)} "
            "(modelplane sets them itself)"
        )
    kwargs.update(options.extra_args)
    return kwargs


_STATES: dict[str, InstanceState] = {"created": "starting", "restarting": "starting"}
_RUNNING = frozenset({"running", "paused"})


def instance_from_attrs(attrs: Mapping[str, Any], log_tail: str = "") -> Instance:
    """An :class:`Instance` from ``docker inspect`` data (pure)."""
    labels = dict(attrs.get("Config", {}).get("Labels") or {})
    state = attrs.get("State", {})
    status = state.get("Status", "")
    inst_state: InstanceState = "running" if status in _RUNNING else _STATES.get(status, "exited")
    exit_reason = None
    if inst_state == "exited":
        exit_reason = f"exited with code {state.get('ExitCode')}"
        if state.get("OOMKilled"):
            exit_reason += " (killed: out of memory)"
        if state.get("Error"):
            exit_reason += f": {state['Error']}"
        if log_tail:
            exit_reason += f"\n--- last log lines ---\n{log_tail}"
    spec = None
    with contextlib.suppress(ValueError, TypeError):
        spec = json.loads(labels.get(SPEC_LABEL, ""))
    gpus = tuple(int(g) for g in labels.get(GPUS_LABEL, "").split(",") if g.strip().isdigit())
    return Instance(
        model=labels.get(MODEL_LABEL, ""),
        runtime="docker",
        ident=attrs.get("Id", ""),
        state=inst_state,
        labels=labels,
        endpoint=_endpoint(labels, attrs) if inst_state != "exited" else None,
        spec=spec,
        gpus=gpus,
        started_at=_timestamp(state.get("StartedAt", "")),
        exit_reason=exit_reason,
    )


def _endpoint(labels: Mapping[str, str], attrs: Mapping[str, Any]) -> str | None:
    if labels.get(PORT_LABEL):
        return f"http://127.0.0.1:{labels[PORT_LABEL]}"
    ports = (attrs.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in ports.get(f"{BRIDGE_PORT}/tcp") or ():
        if binding.get("HostIp") == "127.0.0.1" and binding.get("HostPort"):
            return f"http://127.0.0.1:{binding['HostPort']}"
    return None


def _timestamp(value: str) -> float:
    """Docker's RFC 3339 time (nanoseconds, ``Z``) as a Unix timestamp; 0 when unset."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value or "")
    if not match or match.group(1).startswith("0001"):
        return 0.0
    fraction = (match.group(2) or ".0")[:7]
    zone = "+00:00" if match.group(3) == "Z" else match.group(3)
    return datetime.fromisoformat(match.group(1) + fraction + zone).timestamp()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the runtime -------------------------------------------------------------------------------


class DockerRuntime:
    """Runs models as containers on one docker daemon (``base_url`` or ``DOCKER_HOST``)."""

    name = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        *,
        bridge_network: str = "modelplane",
        on_pull: PullCallback | None = None,
        timeout: int = 60,
    ) -> None:
        self.base_url = base_url
        self.bridge_network = bridge_network
        self.on_pull = on_pull
        self.timeout = timeout
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._reserved_ports: set[int] = set()
        self._model_locks: dict[str, asyncio.Lock] = {}

    # -- daemon access

    def _docker(self) -> docker.DockerClient:
        """The client, (re)built on first use and after the daemon was unreachable."""
        with self._client_lock:
            if self._client is None:
                try:
                    if self.base_url:
                        self._client = docker.DockerClient(
                            base_url=self.base_url, version="auto", timeout=self.timeout
                        )
                    else:
                        self._client = docker.from_env(version="auto", timeout=self.timeout)
                except docker.errors.DockerException as exc:  # no socket, no version answer
                    raise self._unavailable(exc) from exc
            return self._client

    def _unavailable(self, exc: BaseException) -> RuntimeUnavailable:
        where = self.base_url or "DOCKER_HOST (or the default socket)"
        return RuntimeUnavailable(
            f"docker daemon at {where} is unreachable: {_root_cause(exc)} "
            "(is dockerd running, and may modelplane use its socket?)"
        )

    async def _call(self, fn: Callable[[docker.DockerClient], T]) -> T:
        """Run ``fn(client)`` in a thread; an unreachable daemon becomes RuntimeUnavailable."""

        def call() -> T:
            client = self._docker()
            try:
                return fn(client)
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                with self._client_lock:  # rebuilt on the next call, once the daemon is back
                    if self._client is client:
                        self._client = None
                with contextlib.suppress(Exception):
                    client.close()
                raise self._unavailable(exc) from exc

        return await asyncio.to_thread(call)

    async def ping(self) -> None:
        """Raise :class:`RuntimeUnavailable` unless the daemon answers (for ``/readyz``)."""
        await self._call(lambda c: c.ping())

    # -- Runtime protocol

    async def list(self) -> list[Instance]:
        def managed(client: docker.DockerClient) -> list[dict[str, Any]]:
            found = client.containers.list(
                all=True, filters={"label": f"{MANAGED_LABEL}=true"}, ignore_removed=True
            )
            out = []
            for container in found:
                attrs = container.attrs
                labels = attrs.get("Config", {}).get("Labels") or {}
                if labels.get(MANAGED_LABEL) != "true":  # never trust a filter alone
                    continue
                tail = ""
                if attrs.get("State", {}).get("Status") in ("exited", "dead"):
                    # NotFound: removed meanwhile; 409 Conflict: being removed (no logs then)
                    with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                        tail = _decode(container.logs(tail=20))
                out.append({"attrs": attrs, "tail": tail})
            return out

        found = await self._call(managed)
        return [instance_from_attrs(item["attrs"], item["tail"]) for item in found]

    async def start(self, spec: LaunchSpec) -> Instance:
        await self.ensure_image(spec.image or "", spec.container.image_pull, spec.model)
        lock = self._model_locks.setdefault(spec.model, asyncio.Lock())
        async with lock:
            await self._clear_name(spec.model)
            if spec.container.network == "bridge":
                await self._ensure_bridge_network()
            port = self._reserve_port() if spec.container.network == "host" else 0
            try:
                kwargs = container_kwargs(spec, port, self.bridge_network)
                container_id = await self._create_and_start(spec.model, kwargs)
                return await self._wait_healthy(spec, container_id)
            finally:
                self._reserved_ports.discard(port)

    async def stop(self, instance: Instance, grace: float = 10.0) -> None:
        def stop(client: docker.DockerClient) -> None:
            try:
                container = client.containers.get(instance.ident)
            except docker.errors.NotFound:
                return
            if container.labels.get(MANAGED_LABEL) != "true":
                log.warning("not stopping %s: it is not managed by modelplane", instance.ident)
                return
            with contextlib.suppress(docker.errors.NotFound):
                if container.status in ("running", "restarting", "paused"):
                    container.stop(timeout=max(0, math.ceil(grace)))
                container.remove(force=True)

        await self._call(stop)

    async def logs(self, model: str, lines: int = 50) -> str:
        def read(client: docker.DockerClient) -> str:
            try:
                container = client.containers.get(container_name(model))
            except docker.errors.NotFound:
                return ""
            if container.labels.get(MANAGED_LABEL) != "true":
                return ""
            return _decode(container.logs(tail=lines))

        return await self._call(read)

    async def healthy(self, instance: Instance) -> bool:
        if not instance.endpoint:
            return False
        path = instance.labels.get(HEALTH_LABEL) or "/health"
        return await answers_200(instance.endpoint + path)

    # -- images

    async def ensure_image(self, image: str, policy: str, model: str = "") -> None:
        """Make ``image`` present according to ``policy`` (IfNotPresent, Always, Never)."""
        if not image:
            raise PermanentStartError(f"model {model}: the docker runtime needs an engine image")

        def present(client: docker.DockerClient) -> bool:
            try:
                client.images.get(image)
                return True
            except docker.errors.ImageNotFound:
                return False

        have = await self._call(present)
        if policy == "Never":
            if not have:
                raise ImageNotPresent(f"image {image} not present and imagePull is Never")
            return
        if policy == "IfNotPresent" and have:
            return
        try:
            await self._pull(image, model)
        except StartError as exc:
            if not have:
                raise
            self._report(PullProgress(model, image, "using local image", message=exc.message))

    async def _pull(self, image: str, model: str) -> None:
        loop = asyncio.get_running_loop()
        tracker = _PullTracker(model, image)

        def report(progress: PullProgress) -> None:
            loop.call_soon_threadsafe(self._report, progress)

        def pull(client: docker.DockerClient) -> None:
            report(PullProgress(model, image, "pulling"))
            try:
                for item in client.api.pull(image, stream=True, decode=True):
                    if "error" in item:
                        raise StartError(f"pulling image {image} failed: {item['error']}")
                    progress = tracker.update(item)
                    if progress is not None:
                        report(progress)
            except docker.errors.APIError as exc:
                raise StartError(f"pulling image {image} failed: {_explain(exc)}") from exc
            report(tracker.finished())

        try:
            await self._call(pull)
        except StartError as exc:
            self._report(PullProgress(model, image, "failed", message=exc.message))
            raise

    def _report(self, progress: PullProgress) -> None:
        if self.on_pull is not None:
            try:
                self.on_pull(progress)
            except Exception:  # a broken observer must not break a start
                log.exception("on_pull callback failed")

    # -- start internals

    def _reserve_port(self) -> int:
        while True:
            port = _free_port()
            if port not in self._reserved_ports:
                self._reserved_ports.add(port)
                return port

    async def _clear_name(self, model: str) -> None:
        """Remove an old managed container of this model; refuse if a stranger holds the name."""

        def clear(client: docker.DockerClient) -> None:
            try:
                container = client.containers.get(container_name(model))
            except docker.errors.NotFound:
                return
            if container.labels.get(MANAGED_LABEL) != "true":
                raise PermanentStartError(
                    f"model {model}: a container named {container.name} exists and is not "
                    "managed by modelplane; modelplane will not touch it (rename or remove it)"
                )
            container.remove(force=True)

        await self._call(clear)

    async def _ensure_bridge_network(self) -> None:
        def ensure(client: docker.DockerClient) -> None:
            if client.networks.list(names=[self.bridge_network]):
                return
            try:
                client.networks.create(
                    self.bridge_network, driver="bridge", labels={MANAGED_LABEL: "true"}
                )
            except docker.errors.APIError as exc:
                if client.networks.list(names=[self.bridge_network]):
                    return  # created meanwhile by a concurrent start
                raise StartError(
                    f"cannot create the bridge network {self.bridge_network}: {_explain(exc)}"
                ) from exc

        await self._call(ensure)

    async def _create_and_start(self, model: str, kwargs: dict[str, Any]) -> str:
        def run(client: docker.DockerClient) -> str:
            try:
                container = client.containers.create(**kwargs)
            except TypeError as exc:  # an extraArgs key the SDK does not know
                raise PermanentStartError(
                    f"model {model}: spec.container.extraArgs: {exc}"
                ) from exc
            except docker.errors.APIError as exc:
                raise StartError(
                    f"model {model}: docker refused the container: {_explain(exc)}"
                ) from exc
            try:
                container.start()
            except docker.errors.APIError as exc:
                with contextlib.suppress(docker.errors.APIError):
                    container.remove(force=True)
                reason = _explain(exc)
                if "could not select device driver" in reason:
                    reason += " (GPUs need the NVIDIA Container Toolkit configured for docker)"
                raise StartError(f"model {model}: the container did not start: {reason}") from exc
            return container.id

        return await self._call(run)

    async def _wait_healthy(self, spec: LaunchSpec, container_id: str) -> Instance:
        """Poll health until 200; on early exit, timeout or cancel remove the container."""

        async def endpoint() -> str | None:
            instance = await self._inspect(container_id)
            if instance.state == "exited":
                reason = (instance.exit_reason or "exited").split("\n")[0]
                raise StartError(
                    f"model {spec.model}: the container {reason} before it became healthy",
                    await self._tail(container_id),
                )
            return instance.endpoint

        try:
            await wait_until_healthy(spec, endpoint, lambda: self._tail(container_id))
            return await self._inspect(container_id)
        except BaseException:
            await self._discard(container_id)
            raise

    async def _inspect(self, container_id: str) -> Instance:
        return instance_from_attrs(
            await self._call(lambda c: c.api.inspect_container(container_id))
        )

    async def _tail(self, container_id: str, lines: int = 50) -> str:
        with contextlib.suppress(docker.errors.NotFound, RuntimeUnavailable):
            return await self._call(lambda c: _decode(c.api.logs(container_id, tail=lines)))
        return ""

    async def _discard(self, container_id: str) -> None:
        def remove(client: docker.DockerClient) -> None:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.api.remove_container(container_id, force=True)

        with contextlib.suppress(RuntimeUnavailable):
            await asyncio.shield(self._call(remove))


class _PullTracker:
    """Folds the daemon's per-layer pull messages into one :class:`PullProgress` (throttled)."""

    def __init__(self, model: str, image: str, every: float = 0.5) -> None:
        self.model, self.image, self.every = model, image, every
        self.layers: dict[str, tuple[int, int, bool]] = {}  # id -> (current, total, done)
        self.last = 0.0

    def update(self, item: Mapping[str, Any]) -> PullProgress | None:
        layer, status = item.get("id"), item.get("status", "")
        if not layer or status.startswith(("Pulling from", "Digest", "Status")):
            return None
        current, total, done = self.layers.get(layer, (0, 0, False))
        detail = item.get("progressDetail") or {}
        if status == "Downloading":
            current, total = detail.get("current", current), detail.get("total", total)
        if status in ("Download complete", "Pull complete", "Already exists"):
            current, done = total, True
        self.layers[layer] = (current, total, done)
        now = time.monotonic()
        if now - self.last < self.every:
            return None
        self.last = now
        return self._progress("pulling")

    def finished(self) -> PullProgress:
        return self._progress("done")

    def _progress(self, status: str) -> PullProgress:
        values = self.layers.values()
        return PullProgress(
            self.model,
            self.image,
            status,
            layers_done=sum(1 for _, _, done in values if done),
            layers_total=len(self.layers),
            bytes_done=sum(current for current, _, _ in values),
            bytes_total=sum(total for _, total, _ in values),
        )


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").rstrip("\n")


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)


def _root_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return str(exc) or type(exc).__name__
