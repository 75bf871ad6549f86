"""GPU scheduling of a plan: place each start, evict to make room, or say why it cannot run. Pure.

The planner decides *what* must run; this step decides *where*, using the pure policies in
:mod:`reconciler.placement` and :mod:`reconciler.eviction`:

- a start that fits gets its GPUs and the engine's split arguments;
- a start that does not fit makes room by evicting idle, unpinned, lower-or-equal-priority
  models; the start itself waits for a later pass, once the victims have stopped (and NVML
  shows their memory free);
- a start for which nothing can be evicted is ``Unschedulable`` with the numbers.

Only one round of evictions is planned per pass, so two starts never evict for each other.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

from proxy.gateway import PRIORITIES
from reconciler.planning.desired import Desired, DesiredModel
from reconciler.planning.planner import Action, Activity, Placement
from reconciler.runtimes.base import Instance

from .eviction import Eviction, RunningModel, choose_victims, pins_fit
from .inventory import Inventory, observed_usage
from .placement import ModelDemand, claims_of, place
from .types import Claim, GpuInfo
from .vram import Estimate


@dataclass
class Schedule:
    actions: list[Action] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # start deferred: evictions under way
    unschedulable: dict[str, str] = field(default_factory=dict)
    claims: dict[str, tuple[Claim, ...]] = field(default_factory=dict)  # of the starts placed
    placed: dict[str, str] = field(default_factory=dict)  # why each start went where it did
    nodes: dict[str, str] = field(default_factory=dict)  # Ray starts placed: model -> node id


def instance_claims(
    name: str, gpus: Sequence[int], estimate: Estimate | str | None
) -> tuple[Claim, ...]:
    """What a running backend holds, when only its GPUs and its model's estimate are known
    (after a restart of modelplane): the estimate, with the per-GPU overhead on each GPU and
    the rest split evenly."""
    if not gpus or not isinstance(estimate, Estimate) or estimate.fraction is not None:
        return tuple(Claim(name, g, 0) for g in gpus)
    shared = max(0, estimate.bytes - estimate.per_gpu)
    each = estimate.per_gpu + shared // len(gpus)
    return tuple(Claim(name, g, each) for g in gpus)


def demand_of(model: DesiredModel, estimate: Estimate) -> ModelDemand:
    gpus = model.spec.gpus
    return ModelDemand.from_estimate(
        model.name,
        estimate,
        gpus=tuple(gpus) if isinstance(gpus, list) else gpus,
        engine=model.spec.engine,
        priority=PRIORITIES[model.spec.priority],
        args=model.spec.args,
    )


def schedule(
    actions: Sequence[Action],
    desired: Desired,
    actual: Sequence[Instance],
    gpus: Sequence[GpuInfo],
    reserve: int,
    claims: Mapping[str, tuple[Claim, ...]],
    estimates: Mapping[str, Estimate | str],
    running: Sequence[RunningModel],
    settling: frozenset[str] = frozenset(),
) -> Schedule:
    """``claims``: held by backends that run or start now; ``running``: eviction candidates
    (with ``running=False`` for those busy starting or stopping); ``settling``: models whose
    victims were just stopped (their start waits for NVML rather than evicting more)."""
    result = Schedule()
    starts = [a for a in actions if a.kind in ("start", "recreate")]
    starts.sort(key=lambda a: -PRIORITIES[desired.models[a.model].spec.priority])
    result.actions = [a for a in actions if a.kind not in ("start", "recreate")]
    instances = {i.model: i for i in actual if i.managed and i.state == "running"}
    taken: dict[str, tuple[Claim, ...]] = dict(claims)
    evicted = False
    for action in starts:
        model = desired.models[action.model]
        outcome = place_one(model, gpus, reserve, taken, estimates.get(model.name))
        if isinstance(outcome, Placement):
            result.actions.append(replace(action, placement=outcome))
            result.claims[model.name] = taken[model.name] = claims_of(outcome, model.name)
            result.placed[model.name] = outcome.reason
            continue
        demand, reason = outcome
        if demand is None:
            result.unschedulable[model.name] = reason
        elif model.name in settling or evicted:
            result.waiting[model.name] = "waiting for evicted models to free their memory"
        else:
            others = [c for n, cs in taken.items() if n != model.name for c in cs]
            holders = {m.name for m in running}
            stray = [c for c in others if c.model not in holders]
            choice = choose_victims(demand, gpus, running, reserve, stray)
            if isinstance(choice, Eviction) and choice.victims:
                evicted = True
                for victim in choice.victims:
                    inst = instances.get(victim)
                    if inst is not None:
                        cause = choice.causes[victim]
                        result.actions.append(Action("evict", victim, cause, inst))
                result.waiting[model.name] = choice.reason
            elif isinstance(choice, Eviction):  # fits after all (claims moved meanwhile)
                result.waiting[model.name] = "placing on the next pass"
            else:
                result.unschedulable[model.name] = choice.reason
    return result


def place_one(
    model: DesiredModel,
    gpus: Sequence[GpuInfo],
    reserve: int,
    taken: Mapping[str, tuple[Claim, ...]],
    estimate: Estimate | str | None,
) -> Placement | tuple[ModelDemand | None, str]:
    """A placement, or (the demand to evict for, or None, and the reason)."""
    wanted = model.spec.gpus
    if wanted == "none":
        return Placement(reason="gpus: none")
    if not gpus:
        if isinstance(wanted, list):  # no inventory to check against: honour what was asked
            return Placement.as_named(wanted, "explicit GPUs (no inventory to check)")
        return Placement(reason="no GPUs in the inventory: runs without a GPU")
    if not isinstance(estimate, Estimate):
        if isinstance(wanted, list):
            return Placement.as_named(wanted, "explicit GPUs (VRAM not estimated)")
        return None, f"cannot estimate its VRAM ({estimate or 'no estimate'}): set spec.vram"
    demand = demand_of(model, estimate)
    others = [c for name, cs in taken.items() if name != model.name for c in cs]
    placed = place(demand, gpus, others, reserve)
    if isinstance(placed, Placement):
        return placed
    return demand, placed.reason


def holders(
    desired: Desired,
    actual: Sequence[Instance],
    known: Mapping[str, tuple[Claim, ...]],
    estimates: Mapping[str, Estimate | str],
    inventory: Inventory,
    activity: Mapping[str, Activity],
    now: float,
    evictable: Collection[str] | None = None,
) -> tuple[dict[str, tuple[Claim, ...]], list[RunningModel]]:
    """The claims on the GPUs and the eviction candidates, from what runs (the input of
    :func:`schedule`, for the service's loop and the one-shot CLI alike).

    ``known``: claims recorded when backends were placed (the loop keeps those of the models
    that run or start); a running backend without one (adopted after a restart, or any backend
    seen by a one-shot ``apply``) claims its model's estimate on its GPUs. NVML's memory per
    process fills :attr:`Claim.observed` (process runtime: by pid). ``evictable``: the models
    that may be stopped now (the loop: ready and with no action under way); None = every
    running backend.
    """
    running = {i.model: i for i in actual if i.managed and i.state == "running"}
    held = dict(known)
    for name, inst in running.items():
        if name not in held:
            held[name] = instance_claims(name, inst.gpus, estimates.get(name))
    pids = {n: [int(i.ident)] for n, i in running.items() if i.runtime == "process"}
    seen = observed_usage(inventory, pids)
    claims = {
        name: tuple(replace(c, observed=seen.get((name, c.gpu))) for c in cs)
        for name, cs in held.items()
    }
    candidates = []
    for name, cs in claims.items():
        model = desired.models.get(name)
        use = activity.get(name, Activity())
        inst = running.get(name)
        candidates.append(
            RunningModel(
                name=name,
                claims=cs,
                priority=PRIORITIES[model.spec.priority] if model else PRIORITIES["batch"],
                # suspended (frozen) and held (loaded by hand) models are never evicted
                pinned=bool(model and (model.pinned or model.spec.suspend)) or use.held,
                in_flight=use.in_flight,
                last_used=use.last_used or (inst.started_at if inst else now),
                running=inst is not None and (evictable is None or name in evictable),
            )
        )
    return claims, candidates


def pins_problem(
    desired: Desired,
    gpus: Sequence[GpuInfo],
    reserve: int,
    estimates: Mapping[str, Estimate | str],
) -> str | None:
    """Why the pinned models cannot all be on these GPUs at once (capacity, not what runs now),
    or None. Pinned models without an estimate are left out (they are Unschedulable with
    "set spec.vram" on their own)."""
    demands = [
        demand_of(model, estimate)
        for name, model in sorted(desired.models.items())
        if model.pinned
        and not model.spec.suspend
        and isinstance(estimate := estimates.get(name), Estimate)
    ]
    return pins_fit(demands, gpus, reserve)
