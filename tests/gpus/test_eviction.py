"""Eviction: who may go, which set goes, and pins that cannot all fit."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from proxy.gateway import PRIORITIES
from reconciler.gpus import eviction
from reconciler.gpus.eviction import Eviction, RunningModel, choose_victims, pins_fit
from reconciler.gpus.placement import ModelDemand, Unschedulable, place
from reconciler.gpus.types import Claim, GpuInfo
from reconciler.planning.planner import Placement
from reconciler.units import GiB

LOW, NORMAL, HIGH = PRIORITIES["low"], PRIORITIES["normal"], PRIORITIES["high"]
BATCH = PRIORITIES["batch"]


def static(*totals_gib: float) -> list[GpuInfo]:
    return [GpuInfo(i, int(t * GiB), source="static") for i, t in enumerate(totals_gib)]


def model(name: str, gib: float, gpu: int = 0, **kw) -> RunningModel:
    return RunningModel(name, (Claim(name, gpu, int(gib * GiB)),), **kw)


def want(gib: float, priority: int = NORMAL, gpus="auto", engine="llama-server") -> ModelDemand:
    return ModelDemand("new", int(gib * GiB), gpus, engine, priority=priority)


def test_no_victims_when_it_fits() -> None:
    result = choose_victims(want(4), static(24), [model("a", 10)])
    assert isinstance(result, Eviction) and result.victims == () and result.placement.gpus == (0,)


def test_least_recently_used_among_the_lowest_priority() -> None:
    models = [
        model("recent-low", 8, priority=LOW, last_used=300),
        model("old-low", 8, priority=LOW, last_used=100),
        model("older-normal", 8, priority=NORMAL, last_used=50),
    ]
    result = choose_victims(want(8), static(24), models)
    assert isinstance(result, Eviction) and result.victims == ("old-low",)
    assert result.causes == {"old-low": "VRAM for new, priority low"}
    assert result.reason == "evict old-low (frees 8.0 GiB); best fit; leaves 0 B"


def test_lower_priority_goes_first_even_if_it_takes_more_victims() -> None:
    models = [
        model("n", 12, priority=NORMAL, last_used=0),
        model("b1", 6, priority=BATCH, last_used=500),
        model("b2", 6, priority=LOW, last_used=400),
    ]
    result = choose_victims(want(12), static(24), models)
    assert result.victims == ("b1", "b2")  # in stop order: lowest priority first


def test_fewest_victims_within_a_priority() -> None:
    models = [model(f"small{i}", 4, priority=LOW, last_used=i) for i in range(3)]
    models.append(model("big", 12, priority=LOW, last_used=99))
    result = choose_victims(want(12), static(24), models)
    assert result.victims == ("big",)


def test_equal_priority_may_be_evicted_higher_never() -> None:
    assert choose_victims(want(20), static(24), [model("eq", 20, priority=NORMAL)]).victims == (
        "eq",
    )
    refused = choose_victims(want(20), static(24), [model("hi", 20, priority=HIGH)])
    assert isinstance(refused, Unschedulable)
    assert refused.reason.endswith("nothing can be evicted (hi has higher priority (high))")


def test_pinned_busy_and_starting_models_stay() -> None:
    models = [
        model("pinned", 8, priority=BATCH, pinned=True),
        model("busy", 8, priority=BATCH, in_flight=2),
        model("starting", 8, priority=BATCH, running=False),
    ]
    result = choose_victims(want(4), static(24), models)
    assert result == Unschedulable(
        "new needs 4.0 GiB on GPU 0, 0 B free; nothing can be evicted (busy has 2 request(s) "
        "in flight; pinned is pinned; starting is starting or draining)"
    )


def test_not_enough_even_with_every_victim() -> None:
    result = choose_victims(want(40), static(24, 8), [model("a", 8, priority=LOW)])
    assert isinstance(result, Unschedulable)
    assert result.reason.endswith("evicting every evictable model (a) is not enough")


def test_victims_free_room_where_the_demand_then_goes() -> None:
    # GPU 1 has the low-priority model; only evicting it makes a 20 GiB hole
    models = [model("n0", 10, 0, priority=NORMAL), model("l1", 10, 1, priority=LOW)]
    result = choose_victims(want(20, engine="custom"), static(24, 24), models)
    assert result.victims == ("l1",) and result.placement.gpus == (1,)
    # llama-server could spread over the two 14 GiB holes instead: nobody goes
    assert choose_victims(want(20), static(24, 24), models).victims == ()


def test_nvml_memory_of_a_victim_counts_as_freed() -> None:
    gpu = GpuInfo(0, 24 * GiB, free=6 * GiB, used=18 * GiB)  # 2 GiB foreign + 16 GiB ours
    models = [
        RunningModel("a", (Claim("a", 0, 8 * GiB, observed=8 * GiB),), priority=LOW, last_used=1),
        RunningModel("b", (Claim("b", 0, 8 * GiB),), priority=LOW, last_used=2),  # unattributed
    ]
    result = choose_victims(want(12), [gpu], models)
    # without a: 14 GiB free by NVML, less b's claim that NVML does not attribute: 6 GiB
    # without b: 6 + 8 (its claim, as NVML could not say) = 14, fits
    assert result.victims == ("b",)


def test_greedy_fallback_still_frees_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eviction, "SEARCH_LIMIT", 0)
    models = [model(f"m{i}", 4, priority=LOW, last_used=i) for i in range(6)]
    result = choose_victims(want(10), static(24), models)
    assert result.victims == ("m0", "m1", "m2")


def test_pins_fit() -> None:
    gpus = static(40, 40)
    assert pins_fit([want(30), want(30)], gpus, reserve=GiB) is None
    assert pins_fit([want(50, gpus="none")], []) is None
    too_much = pins_fit([want(46, gpus=(0, 1)), replace(want(46), name="b")], gpus)
    assert (
        too_much
        == "pinned models need 92.0 GiB, GPUs have 80.0 GiB (after 0 B reserve per GPU): b, new"
    )
    packing = pins_fit([replace(want(25, engine="custom"), name=n) for n in "abc"], gpus)
    assert packing is not None and packing.startswith("pinned models do not all fit together:")
    assert "(after placing a, b)" in packing
    explicit = pins_fit([want(30, gpus=(0,)), replace(want(30, gpus=(0,)), name="b")], gpus)
    assert explicit.endswith("new needs 30.0 GiB on GPU 0, 10.0 GiB free (after placing b)")
    assert (
        pins_fit([want(1, gpus=(0,))], []) == "pinned models new ask for GPUs, and there are none"
    )


# --- properties ----------------------------------------------------------------------------------


@st.composite
def boxes(draw):
    n = draw(st.integers(1, 3))
    gpus = static(*[draw(st.integers(8, 24)) for _ in range(n)])
    models = []
    for gpu in gpus:  # fill each GPU with up to four models, mostly full
        room = gpu.total // GiB
        for _ in range(draw(st.integers(0, 4))):
            if room == 0:
                break
            size = draw(st.integers(1, room))
            room -= size
            name = f"m{len(models)}"
            models.append(
                RunningModel(
                    name,
                    (Claim(name, gpu.index, size * GiB),),
                    priority=draw(st.sampled_from(sorted(PRIORITIES.values()))),
                    pinned=draw(st.sampled_from([False, False, False, True])),
                    in_flight=draw(st.sampled_from([0, 0, 0, 1])),
                    last_used=float(draw(st.integers(0, 5))),
                    running=draw(st.sampled_from([True, True, True, False])),
                )
            )
    d = want(
        draw(
            st.integers(max(g.total for g in gpus) // GiB // 2, max(g.total for g in gpus) // GiB)
        ),
        draw(st.sampled_from(sorted(PRIORITIES.values()))),
        engine=draw(st.sampled_from(["llama-server", "custom"])),
    )
    return d, gpus, models


@settings(max_examples=300, deadline=None)
@given(boxes())
def test_eviction_properties(box) -> None:
    d, gpus, models = box
    result = choose_victims(d, gpus, models)
    event(
        "unschedulable"
        if isinstance(result, Unschedulable)
        else f"{min(len(result.victims), 3)} victims"
    )
    shuffled = list(models)
    random.Random(1).shuffle(shuffled)
    assert choose_victims(d, gpus, shuffled) == result  # deterministic, order-free
    eligible = [
        m
        for m in models
        if not m.pinned and not m.in_flight and m.running and m.priority <= d.priority
    ]
    feasible = [  # brute force over every subset of the eligible: what the rules say is best
        (max(v.priority for v in combo), len(combo))
        for k in range(1, len(eligible) + 1)
        for combo in itertools.combinations(eligible, k)
        if isinstance(
            place(d, gpus, [c for m in models if m not in combo for c in m.claims]), Placement
        )
    ]
    if isinstance(result, Unschedulable):
        assert not feasible
        return
    if result.victims:
        by = {m.name: m for m in models}
        assert (max(by[v].priority for v in result.victims), len(result.victims)) == min(feasible)
    by_name = {m.name: m for m in models}
    victims = [by_name[v] for v in result.victims]
    for v in victims:
        assert not v.pinned and v.in_flight == 0 and v.running and v.priority <= d.priority
    rest = [c for m in models if m.name not in result.victims for c in m.claims]
    after = place(d, gpus, rest)
    assert isinstance(after, Placement) and after == result.placement  # the set frees enough
    for v in victims:  # and no victim was needed for nothing
        kept = rest + list(v.claims)
        assert isinstance(place(d, gpus, kept), Unschedulable)


def test_the_demands_own_old_instance_is_not_counted() -> None:
    models = [model("new", 20, priority=HIGH), model("low", 2, priority=LOW)]
    result = choose_victims(want(20), static(24), models)
    assert isinstance(result, Eviction) and result.victims == ()
