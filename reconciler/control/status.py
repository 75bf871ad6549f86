"""What each model is doing, on the two axes DESIGN.md §1 names: sync and phase. Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from reconciler.planning.desired import Desired
from reconciler.planning.planner import Activity
from reconciler.runtimes.base import Instance
from reconciler.state.store import ModelState
from reconciler.units import format_size
from reconciler.weights.gate import WeightsInfo


@dataclass(frozen=True)
class ModelStatus:
    name: str
    phase: str  # Ready | Starting | Asleep | Failed | Unschedulable | Downloading | Draining
    #             | Unknown (its runtime cannot be reached)
    sync: str  # Synced | OutOfSync | Stale | Suspended | Orphan | Unknown
    reason: str = ""
    runtime: str = ""
    endpoint: str | None = None
    gpus: tuple[int, ...] = ()
    pinned: bool = False
    in_flight: int = 0
    idle_for: float | None = None
    where: str = ""  # path:line:col of the manifest in force
    override: str = ""  # a manual override in force (loaded by hand), in words
    revision: str | None = None  # hub sources: the commit it runs, else the one resolved
    size: int | None = None  # bytes of the model's files
    quantization: str | None = None  # from the GGUF header
    download: dict[str, int] | None = None  # under way: {"done": bytes, "total": bytes}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def model_statuses(
    desired: Desired,
    actual: Sequence[Instance],
    states: Mapping[str, ModelState],
    activity: Mapping[str, Activity],
    health: Mapping[str, bool],
    now: float,
    unavailable: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
    weights: Mapping[str, WeightsInfo] | None = None,
) -> list[ModelStatus]:
    """One row per model the manifests want, plus managed instances no manifest wants.

    ``unavailable``: runtimes that could not be listed (runtime → why); their models are
    ``Unknown``, with the reason, rather than seemingly ``Asleep``. ``overrides``: model → the
    manual override in force, in words (see reconciler.overrides)."""
    unavailable = unavailable or {}
    running = {i.model: i for i in actual if i.managed}
    rows = []
    for name in sorted(set(desired.models) | set(running)):
        model = desired.models.get(name)
        inst = running.get(name)
        use = activity.get(name, Activity())
        remembered = states.get(name)
        phase, reason = _phase(inst, remembered, health.get(name, False))
        blind = model is not None and inst is None and model.runtime in unavailable
        if blind:
            assert model is not None
            phase = sync = "Unknown"
            reason = f"{model.runtime} runtime unavailable: {unavailable[model.runtime]}"
        elif model is None:
            sync = "Orphan"
            reason = reason or "no manifest wants it: the next apply stops it"
        elif model.spec.suspend:
            sync = "Suspended"
            reason = reason or "spec.suspend: left exactly as it is (no starts, stops, recreates)"
        elif model.stale is not None:
            sync = "Stale"
            reason = f"manifest invalid, last valid version in force: {model.stale}"
        elif (inst and inst.state == "running" and inst.spec_hash != model.spec_hash) or (
            model.pinned and phase != "Ready"
        ):
            sync = "OutOfSync"
        else:
            sync = "Synced"
        last = use.last_used or (inst.started_at if inst else None)
        info = (weights or {}).get(name, WeightsInfo())
        download = None
        if info.done is not None and info.total is not None:
            download = {"done": info.done, "total": info.total}
            if phase == "Downloading":
                reason = _download_reason(info.done, info.total, reason)
        rows.append(
            ModelStatus(
                name=name,
                phase=phase,
                sync=sync,
                reason=reason,
                runtime=inst.runtime if inst else (model.runtime if model else ""),
                endpoint=inst.endpoint if inst and inst.state == "running" else None,
                gpus=inst.gpus if inst else (),
                pinned=bool(model and model.pinned),
                in_flight=use.in_flight,
                idle_for=(now - last) if (last and inst and inst.state == "running") else None,
                where=model.where if model else "",
                override=(overrides or {}).get(name, ""),
                revision=_running_revision(inst) or info.revision,
                size=info.size,
                quantization=info.quantization,
                download=download,
            )
        )
    return rows


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


def _phase(inst: Instance | None, remembered: ModelState | None, healthy: bool) -> tuple[str, str]:
    if inst is not None and inst.state == "running":
        return ("Ready", "") if healthy else ("Starting", "health check not answering yet")
    if inst is not None and inst.state == "exited":
        return "Failed", inst.exit_reason or "exited"
    if remembered is not None:
        return remembered.phase, remembered.reason or ""
    return "Asleep", ""
