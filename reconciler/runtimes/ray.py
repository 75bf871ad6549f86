"""Models as detached Ray actors: the ray runtime behind the ``Runtime`` protocol.

Each model's backend is a :class:`~reconciler.runtimes.ray_actor.ModelBackend` actor named after
the model in modelplane's namespace (``Node.ray.namespace``, default ``modelplane``), on the
node that placement chose (hard node affinity). The actor starts the engine on its node and
reports the endpoint; the proxy on this box forwards to it. Ownership is by namespace: every
actor there is modelplane's, and the managed labels travel in its description, so a restarted
modelplane adopts the actors instead of starting duplicates, and ``down`` removes them.

All Ray calls go through a driver process of its own (:mod:`.ray_link`): a cluster that cannot be
reached raises :class:`RuntimeUnavailable`, as a docker daemon that is down does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import Instance, InstanceState, LaunchSpec, RuntimeUnavailable, StartError
from .health import answers_200
from .ray_actor import BackendSpec
from .ray_driver import CREATE_TIMEOUT, StartRequest
from .ray_link import RayLink
from .ray_nodes import RayNode, parse_nodes

log = logging.getLogger(__name__)

LIST_TIMEOUT = 20.0  # seconds for listing the actors (the driver waits 5 s for their answers)
NODES_TIMEOUT = 60.0  # the first listing probes each new GPU node's NVML
LOGS_TIMEOUT = 15.0
NAMESPACE = "modelplane"

_STATES: dict[str, InstanceState] = {"running": "running", "exited": "exited"}


class RayRuntime:
    name = "ray"

    def __init__(
        self,
        address: str,
        namespace: str = NAMESPACE,
        log_dir: Path | None = None,
        probe: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self.probe = probe  # run once on each GPU node: its GPUs' sizes (gpus.probe_gpus)
        self.on_change: list[Callable[[], None]] = []  # an actor exited, or the link dropped
        log_path = log_dir / "ray-driver.log" if log_dir else None
        self.link = RayLink(address, namespace, log_path, on_event=self._event)
        self._health: dict[str, str] = {}  # actor id -> the engine's health path

    async def list(self) -> list[Instance]:
        records = await self._call("list", LIST_TIMEOUT)
        instances = [instance_of(r) for r in records]
        self._health = {r.get("actor_id", ""): r.get("health_path", "/") for r in records}
        return instances

    async def nodes(self) -> list[RayNode]:
        """Every node of the cluster (dead ones too: their death is a cause to report)."""
        return parse_nodes(await self._call("nodes", NODES_TIMEOUT, probe=self.probe))

    async def start(self, spec: LaunchSpec) -> Instance:
        backend = BackendSpec(
            model=spec.model,
            labels=dict(spec.labels),
            spec=dict(spec.spec),
            command=tuple(spec.command),
            env=dict(spec.env),
            health_path=spec.health_path,
            startup_timeout=spec.startup_timeout,
            prepare=spec.prepare,
        )
        node = spec.node
        request = StartRequest(
            backend, node.node_id if node else None, node.num_gpus if node else 0.0
        )
        # no limit of our own: the actor bounds the engine's start (startupTimeout), Ray
        # reports an actor or node that dies, and a download may rightly take long
        reply = await self._call("start", None, request=request, ready_within=None)
        if "error" in reply:
            raise StartError(f"{spec.model}: {reply['error']}")
        self._health[reply.get("actor_id", "")] = spec.health_path
        return instance_of(reply)

    async def stop(self, instance: Instance, grace: float = 10.0) -> None:
        timeout = grace + CREATE_TIMEOUT
        await self._call("stop", timeout, name=instance.model, actor_id=instance.ident, grace=grace)

    async def logs(self, model: str, lines: int = 50) -> str:
        return str(await self._call("logs", LOGS_TIMEOUT, name=model, lines=lines))

    async def healthy(self, instance: Instance) -> bool:
        if instance.endpoint is None:
            return False
        return await answers_200(instance.endpoint + self._health.get(instance.ident, "/"))

    async def close(self) -> None:
        await self.link.close()

    async def _call(self, op: str, timeout: float | None, **args: Any) -> Any:
        try:
            return await self.link.call(op, timeout, **args)
        except RuntimeError as exc:  # the driver answered with an error (Ray's, in words)
            raise RuntimeUnavailable(f"ray cluster at {self.address}: {exc}") from exc

    def _event(self, message: dict[str, Any]) -> None:
        if message.get("event") == "exited":
            log.info("ray actor %s exited: %s", message.get("model"), message.get("reason"))
        for callback in self.on_change:
            callback()


def instance_of(record: dict[str, Any]) -> Instance:
    """An :class:`Instance` from an actor's description (pure).

    An actor that did not answer in time (``unknown``) counts as starting: it is not routed to,
    and not taken for a crash."""
    state = _STATES.get(record.get("state", ""), "starting")
    return Instance(
        model=record["model"],
        runtime="ray",
        ident=record.get("actor_id", ""),
        state=state,
        labels=record.get("labels") or {},
        endpoint=record.get("endpoint") if state == "running" else None,
        spec=record.get("spec"),
        gpus=tuple(record.get("gpus") or ()),
        started_at=float(record.get("started_at") or 0.0),
        exit_reason=(record.get("detail") or "exited") if state == "exited" else None,
        node=record.get("node", ""),
        node_id=record.get("node_id", ""),
    )
