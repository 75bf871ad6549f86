"""What every view shows: one read-only snapshot of the box, built from the engine's state.

``/api/status``, ``modelplane status`` (through the API when ``run`` is up, else from an offline
engine over the database), ``/metrics``' phase gauges, ``/v1/models``' phases and the systemd
status line all read a :class:`Snapshot`; none computes a phase of its own (docs/architecture.md,
"One state model"). Each model has two axes: *sync* (does reality match the manifest) and its
*phase* (:class:`proxy.gateway.Phase`, from :meth:`Engine.phase_of`). Building one reads memory
only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.gateway import Phase
from reconciler.gitops.applied import applied
from reconciler.gpus.cluster import cluster_json
from reconciler.gpus.inventory import inventory_json
from reconciler.gpus.types import Claim
from reconciler.planning.desired import DesiredModel
from reconciler.runtimes.base import Instance
from reconciler.state.store import Generation
from reconciler.units import format_size
from reconciler.weights.gate import WeightsInfo

from .engine import Engine


@dataclass(frozen=True)
class ModelView:
    """One row of ``status``."""

    name: str
    phase: Phase
    sync: str  # Synced | OutOfSync | Stale | Suspended | Orphan | Unknown
    reason: str = ""
    retry_at: float | None = None  # Failed: when the next start is tried
    since: float | None = None  # when the phase began (this process's view)
    runtime: str = ""
    endpoint: str | None = None
    gpus: tuple[int, ...] = ()
    vram: int | None = None  # bytes claimed on the GPUs
    pinned: bool = False
    held: bool = False  # loaded by hand: kept loaded until unloaded
    override: str = ""  # the manual override in force, in words
    in_flight: int = 0
    idle_for: float | None = None
    unload_at: float | None = None  # when it is unloaded if no request comes (None: never)
    where: str = ""  # path:line:col of the manifest in force
    revision: str | None = None  # hub sources: the commit it runs, else the one resolved
    size: int | None = None  # bytes of the model's files
    quantization: str | None = None  # from the GGUF header
    download: dict[str, int] | None = None  # under way: {"done": bytes, "total": bytes}
    aliases: tuple[str, ...] = ()  # other names clients may send as "model"
    priority: str = ""  # urgent | high | normal | low | batch
    node: str = ""  # the cluster node its backend runs on (the ray runtime); "" = this box

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "phase": str(self.phase),
            "sync": self.sync,
            "reason": self.reason,
            "retryAt": self.retry_at,
            "since": self.since,
            "runtime": self.runtime,
            "endpoint": self.endpoint,
            "gpus": list(self.gpus),
            "vram": self.vram,
            "pinned": self.pinned,
            "held": self.held,
            "override": self.override,
            "inFlight": self.in_flight,
            "idleFor": self.idle_for,
            "unloadAt": self.unload_at,
            "where": self.where,
            "revision": self.revision,
            "size": self.size,
            "quantization": self.quantization,
            "download": self.download,
            "aliases": list(self.aliases),
            "priority": self.priority,
            "node": self.node,
        }


@dataclass(frozen=True)
class Snapshot:
    time: float
    generation: int
    models: tuple[ModelView, ...]
    gpus: dict[str, Any]  # inventory with claims (see gpus.inventory.inventory_json)
    errors: tuple[str, ...] = ()  # invalid documents (their last valid versions are in force)
    warnings: tuple[str, ...] = ()
    runtimes_unavailable: Mapping[str, str] = field(default_factory=dict)
    ready: bool = False  # /readyz
    ready_reason: str = ""
    applied: dict[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # git, notifications (the service's)
    cluster: dict[str, Any] | None = None  # the Ray cluster's nodes (with Node.ray)

    def model(self, name: str) -> ModelView | None:
        return next((m for m in self.models if m.name == name), None)

    def phases(self) -> dict[str, Phase]:
        """Each model the manifests want (orphans left out) and its phase."""
        return {m.name: m.phase for m in self.models if m.sync != "Orphan"}

    def as_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "generation": self.generation,
            "models": [m.as_json() for m in self.models],
            "gpus": self.gpus,
            "errors": list(self.errors),
            "warnings": list(self.warnings),
            "runtimesUnavailable": dict(self.runtimes_unavailable),
            "ready": self.ready,
            "readyReason": self.ready_reason,
            "applied": self.applied,
            **({"cluster": self.cluster} if self.cluster is not None else {}),
            **self.extra,
        }


def readiness(engine: Engine) -> tuple[bool, str]:
    """``/readyz``: not before the first pass, nor with a runtime or the manifests unreadable,
    nor with the state database damaged (a table that no longer reads or writes)."""
    if engine.passes == 0:
        return False, "first reconcile pass not done yet"
    fault = engine.controller.store.fault
    if fault is not None:
        return False, f"{fault}: stop modelplane and run `modelplane reset-db`"
    if engine.unavailable:
        why = "; ".join(f"{r}: {m}" for r, m in engine.unavailable.items())
        return False, f"runtime unavailable: {why}"
    if engine.load_error:
        return False, engine.load_error
    return True, "ok"


def take_snapshot(
    engine: Engine,
    *,
    generation: Generation | None = None,
    warnings: tuple[str, ...] = (),
    extra: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> Snapshot:
    """The box as ``engine`` sees it now: every model the manifests want, plus managed backends
    no manifest wants (``Orphan``)."""
    now = time.time() if now is None else now
    ready, why = readiness(engine)
    desired = engine.desired
    if desired is None:
        return Snapshot(
            now,
            engine.generation,
            (),
            inventory_json(engine.inventory),
            warnings=warnings,
            ready=ready,
            ready_reason=why,
            applied=applied(generation),
            extra=extra or {},
        )
    running = {i.model: i for i in engine.actual if i.managed}
    activity = engine.activity.snapshot()
    overrides = engine.overrides.descriptions()
    rows = []
    for name in sorted(set(desired.models) | set(running)):
        model = desired.models.get(name)
        inst = running.get(name)
        state = engine.phase_of(name)
        use = activity.get(name)
        info = engine.weights_info.get(name, WeightsInfo())
        claims = engine.claims.get(name, ())
        reason = state.reason
        download = _download(engine, name, info)
        if download is not None and state.phase == Phase.DOWNLOADING:
            reason = _download_reason(download["done"], download["total"], reason)
        sync, why = _sync(model, inst, state.phase, desired.node.runtime, engine.unavailable)
        last = (use.last_used if use else None) or (inst.started_at if inst else None)
        up = inst is not None and inst.state == "running"
        rows.append(
            ModelView(
                name=name,
                phase=state.phase,
                sync=sync,
                reason=reason or why,
                retry_at=state.retry_at,
                since=state.since or None,
                runtime=inst.runtime if inst else (model.runtime if model else ""),
                endpoint=engine.ready.get(name) or (inst.endpoint if up and inst else None),
                gpus=inst.gpus if inst else (),
                vram=sum(c.bytes for c in claims) if claims else None,
                pinned=bool(model and model.pinned),
                held=name in engine.activity.held,
                override=overrides.get(name, ""),
                in_flight=use.in_flight if use else 0,
                idle_for=(now - last) if (last and up) else None,
                unload_at=engine.unload_due(name),
                where=model.where if model else "",
                revision=_running_revision(inst) or info.revision,
                size=info.size,
                quantization=info.quantization,
                download=download,
                aliases=tuple(model.spec.aliases) if model else (),
                priority=model.spec.priority if model else "",
                node=inst.node if inst and inst.state != "exited" else "",
            )
        )
    claims_list: list[Claim] = engine.local_claims()  # (Ray models': in the cluster's view)
    pins = (engine.pins,) if engine.pins else ()
    return Snapshot(
        time=now,
        generation=engine.generation,
        models=tuple(rows),
        gpus=inventory_json(engine.inventory, claims_list, desired.node.vram_reserve),
        errors=tuple(str(e) for e in engine.manifests.errors) if engine.manifests else (),
        warnings=(*pins, *warnings),
        runtimes_unavailable=dict(engine.unavailable),
        ready=ready,
        ready_reason=why,
        applied=applied(generation),
        extra=extra or {},
        cluster=_cluster(engine),
    )


def _cluster(engine: Engine) -> dict[str, Any] | None:
    """The Ray cluster (Node.ray): its address, and each node with its GPUs, labels, models."""
    desired = engine.desired
    if desired is None or desired.node.ray is None:
        return None
    nodes = cluster_json(engine.cluster, engine.claims, engine.actual)
    return {"address": desired.node.ray.address, **nodes}


def _sync(
    model: DesiredModel | None,
    inst: Instance | None,
    phase: Phase,
    node_runtime: str,
    unavailable: Mapping[str, str],
) -> tuple[str, str]:
    """The sync axis, and a reason for it when the phase gives none."""
    if model is not None and inst is None and model.runtime in unavailable:
        return "Unknown", ""
    if model is None:
        return "Orphan", "no manifest wants it: the next apply stops it"
    if model.spec.suspend:
        return "Suspended", "spec.suspend: left exactly as it is (no starts, stops, recreates)"
    if model.stale is not None:
        return "Stale", f"manifest invalid, last valid version in force: {model.stale}"
    running = inst is not None and inst.state == "running"
    if (running and inst is not None and inst.spec_hash != model.spec_hash) or (
        model.pinned and phase != Phase.READY
    ):
        return "OutOfSync", ""
    return "Synced", ""


def _download(engine: Engine, name: str, info: WeightsInfo) -> dict[str, int] | None:
    """Bytes done of a download under way in this process (live), else as last measured."""
    total = info.total if info.total is not None else info.size
    if name in engine.downloads and total is not None:
        progress = engine.controller.weights.progress(name)
        return {"done": progress.done if progress else 0, "total": total}
    if info.done is not None and info.total is not None:
        return {"done": info.done, "total": info.total}
    return None


def _running_revision(inst: Instance | None) -> str | None:
    """The commit a running backend was started on (a moved branch shows until recreated)."""
    if inst is None or inst.state != "running" or not inst.spec:
        return None
    hub = (inst.spec.get("source") or {}).get("huggingface")
    return hub.get("revision") if isinstance(hub, dict) else None


def _download_reason(done: int, total: int, why: str) -> str:
    """``12.0 MiB of 40.0 MiB (30%)``, then why it downloads."""
    share = f" ({100 * done // total}%)" if total else ""
    figures = f"{format_size(done)} of {format_size(total)}{share}"
    return f"{figures}: {why}" if why else figures
