"""Placement on a Ray cluster: the single-box policy, run per node, one node per model. Pure.

modelplane chooses the node itself, from each node's GPUs (NVML on the node, or the memory its
``modelplane.io/gpu-memory`` label declares) and the claims of the models already there, and
pins the model's actor to it (Ray's hard node affinity). It asks Ray for the GPUs as well
(``num_gpus``: the claim's share of one GPU, or whole GPUs when a model spreads), so Ray's own
bookkeeping, and every other Ray workload, sees them taken. Why not a custom VRAM resource and
Ray's scheduler: a node-wide VRAM sum cannot say whether a model fits one GPU, Ray leaves an
actor that fits nowhere pending without a word, and evicting needs to know *where* room would
be made — the single-box policy already answers all three, with the numbers.

The rules, on top of :mod:`.scheduler`'s:

- candidates are the live nodes whose labels match the model's ``nodeSelector``;
- a model that needs a GPU goes to nodes with GPUs of known memory, the best fit among them
  (the node left with the least free memory on the GPUs it takes, then the node's name);
- a model without a GPU (``gpus: none``, or a cluster without GPUs) goes to the node with the
  fewest models, workers before the head;
- when no node has room, each candidate node's cheapest eviction (same order as on one box:
  lowest priority, fewest victims, least recently used) is compared, and the cheapest wins;
- otherwise the model is Unschedulable, with every candidate node's reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from proxy.gateway import PRIORITIES
from reconciler.planning.desired import Desired, DesiredModel
from reconciler.planning.planner import Action, Placement
from reconciler.runtimes.base import Instance, NodeChoice
from reconciler.runtimes.ray_nodes import RayNode

from .estimates import NOT_NEEDED
from .eviction import Eviction, RunningModel, choose_victims, victims_cost
from .placement import ModelDemand, claims_of, free_bytes
from .scheduler import Schedule, place_one, schedule
from .types import Claim, GpuInfo
from .vram import Estimate

STARTS = ("start", "recreate")


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster as one pass sees it: its nodes, and where each model's claims are."""

    nodes: tuple[RayNode, ...] = ()
    where: Mapping[str, str] = field(default_factory=dict)  # model -> node id

    @property
    def has_gpus(self) -> bool:
        return any(n.alive and n.gpus for n in self.nodes)


def where_models_run(actual: Sequence[Instance]) -> dict[str, str]:
    """model -> node id of its Ray instances that run or start."""
    return {i.model: i.node_id for i in actual if i.runtime == "ray" and i.state != "exited"}


def gpus_of(node: RayNode) -> tuple[GpuInfo, ...]:
    """A node's GPUs for the placement policy: bookkeeping by claims (no NVML figures here)."""
    return tuple(
        GpuInfo(index=g.index, total=g.total, name=g.name, source="static") for g in node.gpus
    )


def ray_gpus(placed: Placement, gpus: Sequence[GpuInfo]) -> float:
    """What a placement asks of Ray: its claim's share of one GPU, or whole GPUs when it
    spreads. The share is rounded *down* to a hundredth: models this policy packs onto one GPU
    by bytes (three of 8 GiB on 24 GiB) must fit in Ray's count too (3 x 0.33, not 3 x 0.34,
    which Ray would leave pending or put on another GPU)."""
    if len(placed.gpus) > 1:
        return float(len(placed.gpus))
    if not placed.gpus:
        return 0.0
    total = next(g.total for g in gpus if g.index == placed.gpus[0])
    claim = sum(placed.shares)
    return min(1.0, max(0.01, math.floor(100 * claim / total) / 100)) if total else 1.0


def schedule_everywhere(
    actions: Sequence[Action],
    desired: Desired,
    actual: Sequence[Instance],
    gpus: Sequence[GpuInfo],
    reserve: int,
    claims: Mapping[str, tuple[Claim, ...]],
    estimates: Mapping[str, Estimate | str],
    running: Sequence[RunningModel],
    settling: frozenset[str] = frozenset(),
    cluster: Cluster | None = None,
) -> Schedule:
    """:func:`.scheduler.schedule` for this box's models and :func:`schedule_cluster` for the
    Ray models' starts, each with the claims and eviction candidates of its own GPUs."""
    on_ray = {n for n, m in desired.models.items() if m.runtime == "ray"}
    on_ray |= {i.model for i in actual if i.runtime == "ray"}
    ray_starts = [a for a in actions if a.kind in STARTS and a.model in on_ray]
    local = schedule(
        [a for a in actions if a not in ray_starts],
        desired,
        actual,
        gpus,
        reserve,
        {n: c for n, c in claims.items() if n not in on_ray},
        estimates,
        [m for m in running if m.name not in on_ray],
        settling,
    )
    if not ray_starts:
        return local
    remote = schedule_cluster(
        ray_starts,
        desired,
        actual,
        cluster or Cluster(),
        reserve,
        {n: c for n, c in claims.items() if n in on_ray},
        estimates,
        [m for m in running if m.name in on_ray],
        settling,
    )
    local.actions += remote.actions
    local.waiting |= remote.waiting
    local.unschedulable |= remote.unschedulable
    local.claims |= remote.claims
    local.placed |= remote.placed
    local.nodes |= remote.nodes
    return local


def schedule_cluster(
    starts: Sequence[Action],
    desired: Desired,
    actual: Sequence[Instance],
    cluster: Cluster,
    reserve: int,
    claims: Mapping[str, tuple[Claim, ...]],
    estimates: Mapping[str, Estimate | str],
    running: Sequence[RunningModel],
    settling: frozenset[str] = frozenset(),
) -> Schedule:
    """Place the Ray models' starts on nodes (see the module's rules); ``claims`` and
    ``running`` are those of the models on the cluster, ``cluster.where`` says on which node."""
    result = Schedule()
    instances = {i.model: i for i in actual if i.managed and i.state == "running"}
    taken = dict(claims)
    where = dict(cluster.where)
    evicted = False
    ordered = sorted(starts, key=lambda a: -PRIORITIES[desired.models[a.model].spec.priority])
    for action in ordered:
        model = desired.models[action.model]
        outcome = _place_on_cluster(model, cluster, reserve, taken, where, estimates)
        if isinstance(outcome, Found):
            node, placed = outcome.node, outcome.placed
            choice = NodeChoice(node.id, node.name, ray_gpus(placed, gpus_of(node)))
            result.actions.append(replace(action, placement=placed, node=choice))
            result.claims[model.name] = taken[model.name] = claims_of(placed, model.name)
            result.nodes[model.name] = where[model.name] = node.id
            result.placed[model.name] = f"node {node.name}: {placed.reason}"
            continue
        tries, reason = outcome.tries, outcome.reason
        if not tries:
            result.unschedulable[model.name] = reason
        elif model.name in settling or evicted:
            result.waiting[model.name] = "waiting for evicted models to free their memory"
        else:
            best = _cheapest_eviction(tries, running, taken, where, reserve)
            if best is None:
                result.unschedulable[model.name] = f"{reason}; nothing can be evicted"
                continue
            node, eviction = best
            evicted = True
            for victim in eviction.victims:
                if (inst := instances.get(victim)) is not None:
                    result.actions.append(Action("evict", victim, eviction.causes[victim], inst))
            result.waiting[model.name] = f"node {node.name}: {eviction.reason}"
    return result


NodeTry = tuple[RayNode, ModelDemand]  # a node where evictions could make room, and the demand


@dataclass(frozen=True)
class Found:
    node: RayNode
    placed: Placement


@dataclass(frozen=True)
class Missed:
    tries: list[NodeTry]  # nodes worth evicting on
    reason: str


def _place_on_cluster(
    model: DesiredModel,
    cluster: Cluster,
    reserve: int,
    taken: Mapping[str, tuple[Claim, ...]],
    where: Mapping[str, str],
    estimates: Mapping[str, Estimate | str],
) -> Found | Missed:
    """The node and placement, or the nodes worth evicting on (with the demand) and why not."""
    selector = model.spec.node_selector
    alive = [n for n in cluster.nodes if n.alive]
    matching = [n for n in alive if n.matches(selector)]
    if not alive:
        return Missed([], "the Ray cluster has no live node")
    if not matching:
        wanted = ", ".join(f"{k}={v}" for k, v in sorted(selector.items()))
        names = ", ".join(n.name for n in alive)
        return Missed([], f"no live Ray node matches nodeSelector {wanted} (nodes: {names})")
    estimate = estimates.get(model.name)
    if model.spec.gpus == "none" or estimate == NOT_NEEDED or not cluster.has_gpus:
        return Found(_least_loaded(matching, where), Placement(reason=_cpu_reason(model)))
    with_gpus = [n for n in matching if n.gpus]
    reasons = [f"{n.name}: {n.problem or 'no GPUs'}" for n in matching if not n.gpus]
    fits: list[tuple[tuple[int, str], RayNode, Placement]] = []
    tries: list[NodeTry] = []
    for node in with_gpus:
        gpus = gpus_of(node)
        here = {m: cs for m, cs in taken.items() if where.get(m) == node.id}
        outcome = place_one(model, gpus, reserve, here, estimate)
        if isinstance(outcome, Placement):
            others = [c for m, cs in here.items() if m != model.name for c in cs]
            fits.append(((_leftover(outcome, gpus, others, reserve), node.name), node, outcome))
            continue
        demand, why = outcome
        reasons.append(f"{node.name}: {why}")
        if demand is not None:
            tries.append((node, demand))
    if fits:
        _, node, placed = min(fits, key=lambda f: f[0])
        return Found(node, placed)
    return Missed(tries, "no Ray node has room: " + "; ".join(reasons))


def _least_loaded(nodes: Sequence[RayNode], where: Mapping[str, str]) -> RayNode:
    counts = {n.id: 0 for n in nodes}
    for node_id in where.values():
        if node_id in counts:
            counts[node_id] += 1
    return min(nodes, key=lambda n: (n.head, counts[n.id], n.name))


def _cpu_reason(model: DesiredModel) -> str:
    if model.spec.gpus == "none":
        return "gpus: none; the node with the fewest models"
    return "no GPU needed; the node with the fewest models"


def _leftover(
    placed: Placement, gpus: Sequence[GpuInfo], others: Sequence[Claim], reserve: int
) -> int:
    """Free memory left on the GPUs a placement takes (best fit: the less, the better)."""
    mine = dict(zip(placed.gpus, placed.shares, strict=True))
    return sum(free_bytes(g, others, reserve) - mine[g.index] for g in gpus if g.index in mine)


def _cheapest_eviction(
    tries: Sequence[NodeTry],
    running: Sequence[RunningModel],
    taken: Mapping[str, tuple[Claim, ...]],
    where: Mapping[str, str],
    reserve: int,
) -> tuple[RayNode, Eviction] | None:
    """The node whose eviction costs least (by the single-box order), and that eviction."""
    found: list[tuple[tuple, str, RayNode, Eviction]] = []
    for node, demand in tries:
        here = [m for m in running if where.get(m.name) == node.id]
        holders = {m.name for m in here}
        stray = [
            c for m, cs in taken.items() if where.get(m) == node.id and m not in holders for c in cs
        ]
        choice = choose_victims(demand, gpus_of(node), here, reserve, stray)
        if isinstance(choice, Eviction) and choice.victims:
            victims = [m for m in here if m.name in choice.victims]
            found.append((victims_cost(victims), node.name, node, choice))
    if not found:
        return None
    _, _, node, eviction = min(found, key=lambda f: (f[0], f[1]))
    return node, eviction


def cluster_json(
    cluster: Cluster, claims: Mapping[str, tuple[Claim, ...]], actual: Sequence[Instance]
) -> dict[str, Any]:
    """The Ray nodes for ``/api/status``: each with its labels, its GPUs and what modelplane
    claims on them, and the models that run there."""
    where = {**cluster.where, **where_models_run(actual)}
    nodes = []
    for node in cluster.nodes:
        here = {m for m, node_id in where.items() if node_id == node.id}
        gpus = [
            {
                "index": g.index,
                "total": g.total,
                "claimed": sum(
                    c.bytes for m in here for c in claims.get(m, ()) if c.gpu == g.index
                ),
                "models": sorted(
                    m for m in here if any(c.gpu == g.index for c in claims.get(m, ()))
                ),
            }
            for g in node.gpus
        ]
        nodes.append(
            {
                "name": node.name,
                "id": node.id,
                "ip": node.ip,
                "alive": node.alive,
                "head": node.head,
                "labels": dict(node.labels),
                "gpus": gpus,
                "models": sorted(here),
                "problem": node.problem,
                "death": node.death,
            }
        )
    return {"nodes": nodes}
