"""What to stop so a model that must start fits: a pure, deterministic choice.

Who may be evicted: a model that is running (not starting or draining), not pinned, has no
request in flight, and whose priority is **lower than or equal to** the newcomer's (as
llama-swap and Model Boss do: an equal-priority model that was not used lately makes room for
one that is wanted now; a higher-priority model never does).

Which set, among those that make the demand fit (checked with :func:`place` itself, so the
victims free memory on a GPU, or GPUs, where the demand then goes), compared in this order:

1. the lowest top priority among the victims (evict ``batch`` and ``low`` before ``normal``);
2. the fewest victims;
3. the lower priorities overall (``low+batch`` before ``low+low``);
4. the least recently used (the set whose most recently used victim was used longest ago);
5. the fewest bytes freed; 6. names, so equal inputs give equal answers.

The search tries sets in that order of priority level and size and stops at the first size
that works; past :data:`SEARCH_LIMIT` tries it falls back to a greedy pass (add candidates by
priority then least recent use until the demand fits, then drop any it did not need).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

from proxy.gateway import PRIORITIES
from reconciler.planning.planner import Placement
from reconciler.units import format_size

from .placement import ModelDemand, Unschedulable, claims_of, place
from .types import Claim, GpuInfo

SEARCH_LIMIT = 5000
_PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}


@dataclass(frozen=True)
class RunningModel:
    """A model modelplane runs, as eviction needs to see it."""

    name: str
    claims: tuple[Claim, ...] = ()
    priority: int = PRIORITIES["normal"]
    pinned: bool = False
    in_flight: int = 0
    last_used: float = 0.0  # unix time of its last request's end (or its start)
    running: bool = True  # False while starting or draining: its claims count, it is no victim


@dataclass(frozen=True)
class Eviction:
    """Stop ``victims`` (in this order, draining first), then ``placement`` holds.

    ``causes`` is each victim's event text, e.g. ``VRAM for qwen-32b, priority low``.
    """

    victims: tuple[str, ...]
    placement: Placement | None  # None: a slot under Node.maxLoaded, not VRAM
    causes: dict[str, str]
    reason: str


def priority_name(priority: int) -> str:
    return _PRIORITY_NAMES.get(priority, str(priority))


def choose_victims(
    demand: ModelDemand,
    gpus: Sequence[GpuInfo],
    models: Sequence[RunningModel],
    reserve: int = 0,
    other_claims: Sequence[Claim] = (),
) -> Eviction | Unschedulable:
    """Who to evict so ``demand`` fits; no victims when it fits already.

    ``models`` are every model holding claims (an entry named like the demand is ignored, claims
    included: a recreated model's old instance stops first); ``other_claims`` any claim not
    attached to one of them. A victim's NVML memory counts as freed at its
    ``observed`` figure, or at its claim when NVML could not attribute it. After stopping the
    victims, call :func:`place` again until it succeeds (NVML shows the memory free) before
    starting the demand.
    """
    models = [m for m in models if m.name != demand.name]
    claims = [c for m in models for c in m.claims] + list(other_claims)
    first = place(demand, gpus, claims, reserve)
    if isinstance(first, Placement):
        return Eviction((), first, {}, first.reason)
    candidates, refused = _candidates(demand.priority, models)
    if not candidates:
        why = "; ".join(refused) or "no other model holds GPU memory"
        return Unschedulable(f"{first.reason}; nothing can be evicted ({why})")

    def fits(victims: Sequence[RunningModel]) -> Placement | None:
        result = place(demand, *_without(gpus, claims, victims), reserve)
        return result if isinstance(result, Placement) else None

    if fits(candidates) is None:
        names = ", ".join(m.name for m in candidates)
        return Unschedulable(
            f"{first.reason}; evicting every evictable model ({names}) is not enough"
        )
    victims = _search(candidates, fits) or _greedy(candidates, fits)
    placement = fits(victims)
    assert placement is not None  # _search and _greedy only return sets that fit
    causes = {
        v.name: f"VRAM for {demand.name}, priority {priority_name(v.priority)}" for v in victims
    }
    freed = format_size(sum(c.bytes for v in victims for c in v.claims))
    reason = f"evict {', '.join(v.name for v in victims)} (frees {freed}); {placement.reason}"
    return Eviction(tuple(v.name for v in victims), placement, causes, reason)


def _candidates(
    priority: int, models: Sequence[RunningModel], holding_vram: bool = True
) -> tuple[list[RunningModel], list[str]]:
    """The evictable models (in preference order) for a demand of ``priority``, and why each
    other one is not. One policy for VRAM and for ``maxLoaded`` slots: only idle, unpinned,
    running models of lower or equal priority; lowest priority, least recently used first.
    With ``holding_vram``, models that hold no VRAM are not candidates at all."""
    ok: list[RunningModel] = []
    refused: list[str] = []
    for m in sorted(models, key=lambda m: m.name):
        if holding_vram and not m.claims:
            continue
        if m.pinned:
            refused.append(f"{m.name} is pinned")
        elif m.in_flight:
            refused.append(f"{m.name} has {m.in_flight} request(s) in flight")
        elif not m.running:
            refused.append(f"{m.name} is starting or draining")
        elif m.priority > priority:
            refused.append(f"{m.name} has higher priority ({priority_name(m.priority)})")
        else:
            ok.append(m)
    ok.sort(key=lambda m: (m.priority, m.last_used, m.name))
    return ok, refused


def _without(
    gpus: Sequence[GpuInfo], claims: Sequence[Claim], victims: Sequence[RunningModel]
) -> tuple[list[GpuInfo], list[Claim]]:
    """The GPUs and claims as they would be once ``victims`` are gone."""
    gone = {v.name for v in victims}
    back: dict[int, int] = {}
    for v in victims:
        for c in v.claims:
            back[c.gpu] = back.get(c.gpu, 0) + (c.observed if c.observed is not None else c.bytes)
    after = [
        replace(g, free=min(g.total, g.free + back.get(g.index, 0))) if g.free is not None else g
        for g in gpus
    ]
    return after, [c for c in claims if c.model not in gone]


def victims_cost(victims: Sequence[RunningModel]) -> tuple:
    prios = sorted((v.priority for v in victims), reverse=True)
    return (
        prios[0],
        len(victims),
        prios,
        sorted((v.last_used for v in victims), reverse=True),
        sum(c.bytes for v in victims for c in v.claims),
        sorted(v.name for v in victims),
    )


def _search(candidates: list[RunningModel], fits) -> list[RunningModel] | None:
    """The best set by :func:`victims_cost`, or None past :data:`SEARCH_LIMIT` tries.

    A set at priority level p must hold a model of level p (sets below p were all tried), and
    fitting is monotone (fewer claims never hurt), so the first size that fits is the fewest.
    """
    tries = 0
    for level in sorted({m.priority for m in candidates}):
        pool = [m for m in candidates if m.priority <= level]
        for size in range(1, len(pool) + 1):
            found = []
            for combo in itertools.combinations(pool, size):
                if all(m.priority < level for m in combo):
                    continue
                tries += 1
                if tries > SEARCH_LIMIT:
                    return None
                if fits(combo):
                    found.append(list(combo))
            if found:
                return min(found, key=victims_cost)
    return None


def _greedy(candidates: list[RunningModel], fits) -> list[RunningModel]:
    """Add in preference order until it fits, then drop what was not needed."""
    chosen: list[RunningModel] = []
    for m in candidates:
        chosen.append(m)
        if fits(chosen):
            break
    for m in reversed(list(chosen)):
        rest = [v for v in chosen if v is not m]
        if rest and fits(rest):
            chosen = rest
    return chosen


def pins_fit(
    pinned: Sequence[ModelDemand], gpus: Sequence[GpuInfo], reserve: int = 0
) -> str | None:
    """For ``validate``/``plan``: None when every pinned model fits the GPUs' capacity together.

    Capacity only (``total - reserve`` per GPU; what other processes use now is the run-time
    check's business). First the sum ("pinned models need 92.0 GiB, GPUs have 80.0 GiB"), then
    a packing with :func:`place`: explicit indices first, then largest first, by name on ties.
    Packing is a heuristic: it may report a set that some other arrangement could hold.
    """
    on_gpu = [d for d in pinned if d.gpus != "none"]
    if not on_gpu:
        return None
    empty = [replace(g, free=None, used=None, processes=()) for g in gpus]
    if not empty:
        explicit = [d.name for d in on_gpu if isinstance(d.gpus, tuple)]
        return (
            f"pinned models {', '.join(explicit)} ask for GPUs, and there are none"
            if explicit
            else None
        )
    capacity = sum(max(0, g.total - reserve) for g in empty)
    need = sum(_least_need(d, empty) for d in on_gpu)
    if need > capacity:
        names = ", ".join(sorted(d.name for d in on_gpu))
        return (
            f"pinned models need {format_size(need)}, GPUs have {format_size(capacity)} "
            f"(after {format_size(reserve)} reserve per GPU): {names}"
        )
    order = sorted(
        on_gpu, key=lambda d: (not isinstance(d.gpus, tuple), -_least_need(d, empty), d.name)
    )
    claims: list[Claim] = []
    for i, d in enumerate(order):
        result = place(d, empty, claims, reserve)
        if isinstance(result, Unschedulable):
            before = ", ".join(p.name for p in order[:i]) or "nothing"
            return (
                f"pinned models do not all fit together: {result.reason} (after placing {before})"
            )
        claims += claims_of(result, d.name)
    return None


def _least_need(d: ModelDemand, gpus: Sequence[GpuInfo]) -> int:
    if d.fraction is not None:
        return min(int(d.fraction * g.total) for g in gpus)
    return d.bytes


def choose_slot_victims(
    demand: str, priority: int, models: Sequence[RunningModel], max_loaded: int
) -> Eviction | Unschedulable:
    """``Node.maxLoaded``: who to evict so that ``demand`` can be one of at most ``max_loaded``
    models loaded at once (a CPU-only box has no VRAM figure to go by). The same policy as for
    VRAM: only idle, unpinned models of lower or equal priority, lowest priority and least
    recently used first. No victims when a slot is free."""
    others = [m for m in models if m.name != demand]
    over = len(others) + 1 - max_loaded
    reason = f"{len(others)} of maxLoaded {max_loaded} loaded"
    if over <= 0:
        return Eviction((), None, {}, reason)
    ok, refused = _candidates(priority, others, holding_vram=False)
    if len(ok) < over:
        why = "; ".join(refused) or "no other model is loaded"
        return Unschedulable(f"{reason}; not enough can be evicted ({why})")
    victims = ok[:over]
    causes = {
        v.name: f"maxLoaded {max_loaded} for {demand}, priority {priority_name(v.priority)}"
        for v in victims
    }
    names = ", ".join(v.name for v in victims)
    return Eviction(tuple(v.name for v in victims), None, causes, f"{reason}: evict {names}")
