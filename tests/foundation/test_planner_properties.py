"""Property tests of the planner (hypothesis): convergence, and unmanaged instances untouched.

Random desired sets and random actual instances (managed and unmanaged, running, starting and
exited, matching and stale spec hashes), random activity; plan, apply the actions to a simulated
actual state, plan again at the same ``now``: nothing is left to do.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.planning.desired import Desired
from reconciler.planning.planner import Activity, PruneRefused, plan
from reconciler.runtimes.base import Instance

from .planning import desired, desired_model, instance, simulate

NOW = 1_000_000.0
NAMES = ["a", "b", "c"]
AGES = [0.0, 30.0, 600.0, 7200.0]

model_specs = st.fixed_dictionaries(
    {
        "args": st.sampled_from([[], ["--x"], ["--x", "--y"]]),
        "env": st.sampled_from([{}, {"K": "v"}]),
        "pin": st.booleans(),
        "stay_warm": st.sampled_from([0, 60, 900]),
        "suspend": st.sampled_from([False, False, False, True]),
    }
)
desired_sets = st.dictionaries(st.sampled_from(NAMES), model_specs).map(
    lambda specs: desired(*(desired_model(name, **spec) for name, spec in sorted(specs.items())))
)
activities = st.dictionaries(
    st.sampled_from(NAMES),
    st.builds(
        Activity,
        in_flight=st.integers(0, 2),
        last_used=st.one_of(st.none(), st.sampled_from([NOW - a for a in AGES])),
        wanted=st.booleans(),
    ),
)


@st.composite
def actual_states(draw: Any, want: Desired) -> list[Instance]:
    found = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from([*NAMES, "zz"]))
        model = want.models.get(name)
        matching = model is not None and draw(st.booleans())
        found.append(
            instance(
                model if matching else name,  # type: ignore[arg-type]
                draw(st.sampled_from(["running", "running", "starting", "exited"])),
                managed=draw(st.booleans()) or draw(st.booleans()),
                started_at=NOW - draw(st.sampled_from(AGES)),
                hash_=None if matching else draw(st.sampled_from(["0ld0ld0ld0ld", "abcdefabcdef"])),
            )
        )
    return found


scenarios = desired_sets.flatmap(
    lambda want: st.tuples(st.just(want), actual_states(want), activities)
)


@settings(max_examples=150, deadline=None)
@given(scenarios)
def test_plan_apply_plan_converges(scenario: tuple[Desired, list[Instance], dict]) -> None:
    want, actual, activity = scenario
    actions = plan(want, actual, NOW, activity, allow_empty=True)
    after = simulate(actions, want, actual, NOW)
    assert plan(want, after, NOW, activity, allow_empty=True) == []


@settings(max_examples=150, deadline=None)
@given(scenarios)
def test_the_plan_never_touches_an_unmanaged_instance(
    scenario: tuple[Desired, list[Instance], dict],
) -> None:
    want, actual, activity = scenario
    actions = plan(want, actual, NOW, activity, allow_empty=True)
    touched = [a.instance for a in actions if a.instance is not None]
    assert all(inst.managed for inst in touched)
    assert all(any(inst is a for a in actual) for inst in touched)
    unmanaged = [i for i in actual if not i.managed]
    after = simulate(actions, want, actual, NOW)
    assert all(any(i is u for i in after) for u in unmanaged)


@settings(max_examples=100, deadline=None)
@given(scenarios)
def test_every_action_has_a_cause_and_suspended_models_are_untouched(
    scenario: tuple[Desired, list[Instance], dict],
) -> None:
    want, actual, activity = scenario
    for action in plan(want, actual, NOW, activity, allow_empty=True):
        assert action.cause and str(action).endswith(f"({action.cause})")
        model = want.models.get(action.model)
        assert model is None or not model.spec.suspend


@settings(max_examples=100, deadline=None)
@given(scenarios)
def test_the_prune_guard_refuses_exactly_when_every_model_would_be_stopped(
    scenario: tuple[Desired, list[Instance], dict],
) -> None:
    want, actual, activity = scenario
    allowed = plan(want, actual, NOW, activity, allow_empty=True)
    prunes = [a for a in allowed if a.cause == "removed from manifests"]
    if not want.models and prunes:
        try:
            plan(want, actual, NOW, activity)
        except PruneRefused:
            return
        raise AssertionError("an empty manifest set stopped models without --allow-empty")
    assert plan(want, actual, NOW, activity) == allowed
