"""GPU scheduling for the one-shot CLI (``plan``, ``apply``): the loop's policy, run once.

``modelplane run`` schedules in its loop, with claims it remembers between passes. A CLI command
has no such memory: it rebuilds the claims from what runs (each backend's GPUs and its model's
estimate), schedules with the same pure function (:func:`reconciler.scheduler.schedule`), and
``apply`` carries the result out in rounds: stops and evictions first, then the starts that
fit; a start that waited for evictions is placed again once the GPUs show the room (NVML is
polled for at most :data:`SETTLE` seconds), and may evict again, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.gpus.estimates import estimate_all
from reconciler.gpus.eviction import RunningModel
from reconciler.gpus.inventory import Inventory, inventory_json, node_gpus, read_inventory
from reconciler.gpus.scheduler import Schedule, holders, pins_problem, schedule
from reconciler.gpus.types import Claim
from reconciler.gpus.vram import Estimate
from reconciler.manifests.loader import ManifestError
from reconciler.manifests.manifest_set import ManifestSet
from reconciler.planning.desired import Desired, DesiredModel, build_desired
from reconciler.planning.outcome import Outcome
from reconciler.planning.planner import Action, Activity
from reconciler.runtimes.base import Instance

if TYPE_CHECKING:
    from .controller import Controller

SETTLE = 10.0  # seconds a start waits for evicted models' memory to show free in NVML
POLL = 0.25
STARTS = ("start", "recreate")
UNSCHEDULABLE = "unschedulable: "  # how an apply's outcome message says so


@dataclass
class GpuState:
    """The GPUs as one CLI command sees them, and what it scheduled."""

    inventory: Inventory = field(default_factory=Inventory)
    estimates: dict[str, Estimate | str] = field(default_factory=dict)
    claims: dict[str, tuple[Claim, ...]] = field(default_factory=dict)  # of what runs
    candidates: list[RunningModel] = field(default_factory=list)
    schedule: Schedule = field(default_factory=Schedule)
    deferred: list[Action] = field(default_factory=list)  # starts waiting or unschedulable
    pins: str | None = None  # why the pinned models cannot all fit, if they cannot
    reserve: int = 0  # Node.vramReserve

    @property
    def all_claims(self) -> list[Claim]:
        """Claims of what runs plus those of the starts placed (for the inventory views)."""
        merged = {**self.claims, **self.schedule.claims}
        return [c for cs in merged.values() for c in cs]


async def read_state(
    desired: Desired,
    actual: Sequence[Instance],
    activity: Mapping[str, Activity],
    resolve_path: Callable[[DesiredModel], str | None],
    estimates: dict[str, Estimate | str] | None = None,
) -> GpuState:
    """Inventory (NVML or the Node's list), estimates and the claims of what runs."""
    inventory = await asyncio.to_thread(read_inventory, node_gpus(desired.node))
    if estimates is None:
        estimates = await asyncio.to_thread(
            estimate_all, desired, resolve_path, None, bool(inventory.gpus)
        )
    claims, candidates = holders(desired, actual, {}, estimates, inventory, activity, time.time())
    pins = pins_problem(desired, inventory.gpus, desired.node.vram_reserve, estimates)
    reserve = desired.node.vram_reserve
    return GpuState(inventory, estimates, claims, candidates, pins=pins, reserve=reserve)


def schedule_into(
    state: GpuState,
    actions: Sequence[Action],
    desired: Desired,
    actual: Sequence[Instance],
    settling: frozenset[str] = frozenset(),
) -> list[Action]:
    """Schedule ``actions`` on ``state`` (filling its ``schedule`` and ``deferred``); returns
    what to do now: the stops and evictions, then the starts that were placed."""
    state.schedule = schedule(
        actions,
        desired,
        actual,
        state.inventory.gpus,
        desired.node.vram_reserve,
        state.claims,
        state.estimates,
        state.candidates,
        settling,
    )
    held = {**state.schedule.waiting, **state.schedule.unschedulable}
    state.deferred = [a for a in actions if a.kind in STARTS and a.model in held]
    now = [a for a in state.schedule.actions if a.kind not in STARTS]
    return now + [a for a in state.schedule.actions if a.kind in STARTS]


async def converge(
    controller: Controller,
    desired: Desired,
    actions: list[Action],
    state: GpuState,
    activity: Mapping[str, Activity],
    generation: int,
) -> list[Outcome]:
    """Carry out a scheduled plan (``actions`` and ``state`` from :func:`schedule_into`)."""
    outcomes = await _rounds(controller, desired, actions, state, activity, generation)
    # A model an earlier apply could not place, and that this one did not try or placed,
    # is Unschedulable no more.
    failed = {o.action.model for o in outcomes if o.message.startswith(UNSCHEDULABLE)}
    for name, remembered in (await controller.store.model_states()).items():
        if remembered.phase == "Unschedulable" and name not in failed:
            await controller.store.clear_model_state(name)
    return outcomes


async def _rounds(
    controller: Controller,
    desired: Desired,
    actions: list[Action],
    state: GpuState,
    activity: Mapping[str, Activity],
    generation: int,
) -> list[Outcome]:
    executor = controller.executor
    outcomes: list[Outcome] = []
    rounds = len(state.deferred) + 1  # each round places at least one more start, or gives up
    while True:
        for name, reason in state.schedule.unschedulable.items():
            outcomes.append(await _unschedulable(controller, state.deferred, name, reason))
        stops = [a for a in actions if a.kind not in STARTS]
        starts = [a for a in actions if a.kind in STARTS]
        outcomes += await executor.run(stops, desired, generation)
        outcomes += await executor.run(starts, desired, generation)
        waiting = [a for a in state.deferred if a.model in state.schedule.waiting]
        rounds -= 1
        if not waiting:
            return outcomes
        if rounds == 0:  # evictions did not make the room they promised (they failed?)
            for action in waiting:
                reason = f"no room after evictions: {state.schedule.waiting[action.model]}"
                outcomes.append(await _unschedulable(controller, waiting, action.model, reason))
            return outcomes
        state, actions = await _wait_for_room(controller, desired, waiting, activity, state)


async def _wait_for_room(
    controller: Controller,
    desired: Desired,
    waiting: list[Action],
    activity: Mapping[str, Activity],
    previous: GpuState,
) -> tuple[GpuState, list[Action]]:
    """Schedule the starts that waited for evictions again, once the GPUs show the room.

    Until :data:`SETTLE` has passed, a start that does not fit yet waits (NVML may lag behind
    a process that just exited); after that it is scheduled as on a fresh pass (it may evict
    again, or be Unschedulable)."""
    names = frozenset(a.model for a in waiting)
    deadline = time.monotonic() + SETTLE
    while True:
        actual, _ = await controller.observe(desired)
        resolve = controller.executor.resolve_path
        state = await read_state(desired, actual, activity, resolve, previous.estimates)
        settling = names if time.monotonic() < deadline else frozenset()
        actions = schedule_into(state, waiting, desired, actual, settling)
        if not settling or not state.schedule.waiting:
            return state, actions
        await asyncio.sleep(POLL)


async def _unschedulable(
    controller: Controller, deferred: Sequence[Action], name: str, reason: str
) -> Outcome:
    action = next(a for a in deferred if a.model == name)
    await controller.store.set_model_state(name, "Unschedulable", reason)
    await controller.store.add_event("Unschedulable", f"{action}: {reason}", name)
    return Outcome(action, False, f"{UNSCHEDULABLE}{reason}")


# --- what plan shows ----------------------------------------------------------------------------


def estimate_json(estimate: Estimate | str | None) -> dict[str, Any]:
    if not isinstance(estimate, Estimate):
        return {"error": estimate or "no estimate"}
    return {
        "describe": estimate.describe(),
        "bytes": estimate.bytes,
        "source": estimate.source,
        "perGpu": estimate.per_gpu,
        "fraction": estimate.fraction,
        "parts": dict(estimate.parts or {}),
        "notes": list(estimate.notes),
    }


def placement_text(action: Action, state: GpuState) -> str:
    """What ``plan`` appends to a start's cause: where it goes, or why it waits or cannot."""
    sched = state.schedule
    if action.kind not in STARTS:
        return ""
    if action.model in sched.unschedulable:
        return f"UNSCHEDULABLE: {sched.unschedulable[action.model]}"
    if action.model in sched.waiting:
        return f"after evictions: {sched.waiting[action.model]}"
    if action.placement is None or not state.inventory.gpus:
        return ""
    gpus, args = action.placement
    where = f"GPU {','.join(map(str, gpus))}" if gpus else "no GPU"
    why = sched.placed.get(action.model, "")
    extra = f" {' '.join(args)}" if args else ""
    return f"{where}{extra} ({why})" if why else f"{where}{extra}"


def schedule_json(state: GpuState) -> dict[str, Any]:
    """``plan --json``'s GPU part: inventory with claims, placements, waits, pins."""
    placements = {}
    for action in state.schedule.actions:
        if action.kind in STARTS and action.placement is not None:
            gpus, args = action.placement
            placements[action.model] = {
                "gpus": list(gpus) if gpus is not None else None,
                "args": list(args),
                "claims": [
                    {"gpu": c.gpu, "bytes": c.bytes}
                    for c in state.schedule.claims.get(action.model, ())
                ],
                "reason": state.schedule.placed.get(action.model, ""),
            }
    return {
        "inventory": inventory_json(state.inventory, state.all_claims),
        "placements": placements,
        "waiting": dict(state.schedule.waiting),
        "unschedulable": dict(state.schedule.unschedulable),
        "pins": state.pins,
    }


def static_pins_problem(manifests: ManifestSet) -> ManifestError | None:
    """For ``validate``: pinned models that cannot all fit the GPUs a static ``Node.gpus``
    lists (a property of the manifests themselves, so an error there; with ``gpus: auto`` it
    depends on the box, and ``plan`` checks it). Reported at the Node document."""
    node, where = manifests.node, manifests.node_doc
    if not isinstance(node.gpus, list) or where is None:
        return None
    desired = build_desired(manifests)
    inventory = read_inventory(node_gpus(node))
    estimates = estimate_all(desired, lambda model: None, None, bool(inventory.gpus))
    problem = pins_problem(desired, inventory.gpus, node.vram_reserve, estimates)
    if problem is None:
        return None
    return ManifestError(where.path, where.line, where.col, where.kind, where.name, problem)
