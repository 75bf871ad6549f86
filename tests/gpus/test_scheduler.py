"""The scheduling step between plan and execute (reconciler/scheduler.py): claims rebuilt from
what runs, one round of evictions per pass, waiting while victims free their memory, pins."""

from __future__ import annotations

from dataclasses import replace

from reconciler.gpus.inventory import Inventory
from reconciler.gpus.scheduler import holders, instance_claims, pins_problem, schedule
from reconciler.gpus.types import Claim, GpuInfo
from reconciler.gpus.vram import Estimate
from reconciler.planning.planner import Action, Activity, Placement
from reconciler.units import GiB
from tests.foundation.planning import desired, desired_model, instance

GPUS = (GpuInfo(0, 10 * GiB, source="static"), GpuInfo(1, 10 * GiB, source="static"))


def gib(n: float) -> Estimate:
    return Estimate(int(n * GiB), "spec.vram")


def test_claims_of_a_running_backend_are_rebuilt_from_its_gpus_and_estimate() -> None:
    spread = Estimate(10 * GiB, "gguf", per_gpu=1 * GiB)
    assert instance_claims("m", (0, 1), spread) == (
        Claim("m", 0, int(5.5 * GiB)),
        Claim("m", 1, int(5.5 * GiB)),
    )
    assert instance_claims("m", (0,), "no estimate") == (Claim("m", 0, 0),)


def test_holders_from_what_runs_and_what_is_known() -> None:
    a, b, s = desired_model("a", priority="low"), desired_model("b", pin=True), desired_model("s")
    state = desired(a, b, s)
    actual = [
        replace(instance(a, started_at=50.0), gpus=(1,)),
        replace(instance(b, started_at=60.0), gpus=(0,)),
    ]
    known = {"b": (Claim("b", 0, 3 * GiB),), "s": (Claim("s", 0, 2 * GiB),)}  # s is starting
    activity = {"a": Activity(in_flight=2)}
    claims, models = holders(
        state, actual, known, {"a": gib(4), "b": gib(9)}, Inventory(GPUS), activity, 100.0, {"a"}
    )
    assert claims == {
        "a": (Claim("a", 1, 4 * GiB),),  # rebuilt: nothing known about it
        "b": (Claim("b", 0, 3 * GiB),),  # known wins over the estimate
        "s": (Claim("s", 0, 2 * GiB),),
    }
    by_name = {m.name: m for m in models}
    assert (by_name["a"].in_flight, by_name["a"].last_used, by_name["a"].running) == (2, 50.0, True)
    assert (by_name["b"].pinned, by_name["b"].running) == (True, False)  # not in evictable
    assert (by_name["s"].running, by_name["s"].last_used) == (False, 100.0)  # starting


def _state(*running: tuple[str, int, float, str]) -> tuple:
    models = [desired_model(n, priority=p) for n, _, _, p in running]
    models += [desired_model("new1"), desired_model("new2")]
    actual = [
        replace(instance(n, started_at=float(i)), gpus=(g,))
        for i, (n, g, _, _) in enumerate(running)
    ]
    estimates = {n: gib(size) for n, _, size, _ in running} | {"new1": gib(6), "new2": gib(6)}
    state = desired(*models)
    claims, cands = holders(state, actual, {}, estimates, Inventory(GPUS), {}, 10.0)
    return state, actual, claims, cands, estimates


def test_one_round_of_evictions_per_pass_and_no_more_while_settling() -> None:
    state, actual, claims, cands, estimates = _state(("x", 0, 8, "low"), ("y", 1, 8, "low"))
    starts = [Action("start", "new1", "requested"), Action("start", "new2", "requested")]
    first = schedule(starts, state, actual, GPUS, 0, claims, estimates, cands)
    assert [(a.kind, a.model, a.cause) for a in first.actions] == [
        ("evict", "x", "VRAM for new1, priority low")  # x started first: least recently used
    ]
    assert first.waiting == {
        "new1": "evict x (frees 8.0 GiB); best fit; leaves 4.0 GiB",
        "new2": "waiting for evicted models to free their memory",
    }
    # While x stops (and NVML catches up), new1 waits rather than evicting y as well.
    settling = schedule(starts[:1], state, actual, GPUS, 0, claims, estimates, cands, {"new1"})
    assert settling.actions == []
    assert settling.waiting == {"new1": "waiting for evicted models to free their memory"}


def test_placed_starts_carry_their_gpus_and_reason() -> None:
    state, actual, claims, cands, estimates = _state(("x", 0, 8, "low"))
    result = schedule(
        [Action("start", "new1", "pinned")], state, actual, GPUS, 0, claims, estimates, cands
    )
    placement = Placement((1,), (6 * GiB,), (), "best fit; leaves 4.0 GiB")
    assert [a.placement for a in result.actions] == [placement]
    assert result.claims == {"new1": (Claim("new1", 1, 6 * GiB),)}
    assert result.placed == {"new1": "best fit; leaves 4.0 GiB"}


def test_pins_problem_counts_only_pinned_models_it_can_estimate() -> None:
    models = desired(
        desired_model("p1", pin=True),
        desired_model("p2", pin=True),
        desired_model("off", pin=True, suspend=True),
        desired_model("unknown", pin=True),
        desired_model("lazy"),
    )
    estimates = {
        "p1": gib(12),
        "p2": gib(9),
        "off": gib(20),
        "unknown": "no estimate",
        "lazy": gib(20),
    }
    assert pins_problem(models, GPUS, 0, estimates) == (
        "pinned models need 21.0 GiB, GPUs have 20.0 GiB (after 0 B reserve per GPU): p1, p2"
    )
    assert pins_problem(models, GPUS, 0, {**estimates, "p2": gib(8)}) is None


def test_named_gpus_are_honoured_unchecked_without_an_inventory_or_an_estimate() -> None:
    named, auto = desired_model("n", gpus=[1, 0]), desired_model("a")
    none = desired_model("c", gpus="none")
    starts = [Action("start", m.name, "pinned") for m in (named, auto, none)]
    bare = schedule(starts, desired(named, auto, none), [], (), 0, {}, {}, [])
    placements = {a.model: a.placement for a in bare.actions}
    assert placements == {
        "n": Placement((1, 0), (0, 0), (), "explicit GPUs (no inventory to check)"),
        "a": Placement((), (), (), "no GPUs in the inventory: runs without a GPU"),
        "c": Placement((), (), (), "gpus: none"),
    }
    assert bare.claims == {"n": (Claim("n", 1, 0), Claim("n", 0, 0)), "a": (), "c": ()}
    unknown = schedule(starts[:1], desired(named), [], GPUS, 0, {}, {"n": "no GGUF"}, [])
    unchecked = Placement((1, 0), (0, 0), (), "explicit GPUs (VRAM not estimated)")
    assert unknown.actions[0].placement == unchecked
