"""The download gate (reconciler.weights_plan), a pure function: no start without weights."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from reconciler.planning.desired import DesiredModel
from reconciler.planning.planner import Action, Activity, plan
from reconciler.weights.gate import WeightsState, gate_downloads
from tests.foundation.planning import desired, desired_model, instance


def hub(name: str, **spec: Any) -> DesiredModel:
    source = {"huggingface": {"repo": f"org/{name}"}}
    if "prefetch" in spec:
        source["prefetch"] = spec.pop("prefetch")
    return desired_model(name, source=source, **spec)


def missing(name: str, **kw: Any) -> WeightsState:
    fields = {"missing_files": 1, "missing_bytes": 3 * 2**20, **kw}
    return WeightsState(f"org/{name}", "c" * 40, False, **fields)


READY = WeightsState("org/x", "c" * 40, True)


def test_a_pinned_model_downloads_before_it_starts() -> None:
    want = desired(hub("m", pin=True))
    actions = plan(want, [], 0.0)
    assert [a.kind for a in actions] == ["start"]

    gated = gate_downloads(actions, want, {"m": missing("m")})

    assert gated.actions == [
        Action("download", "m", "pinned, not running; fetch 1 file, 3.0 MiB, of org/m@cccccccccccc")
    ]
    ready = gate_downloads(actions, want, {"m": READY})
    assert ready.actions == actions


def test_prefetch_follows_the_flag_and_suspend_stops_it() -> None:
    want = desired(hub("on"), hub("off", prefetch=False), hub("frozen", suspend=True))
    weights = {name: missing(name) for name in want.models}

    gated = gate_downloads(plan(want, [], 0.0), want, weights)

    assert [(a.kind, a.model) for a in gated.actions] == [("download", "on")]
    assert gated.actions[0].cause.startswith("prefetch; ")
    requested = plan(want, [], 0.0, {"off": Activity(wanted=True)})
    assert [a.model for a in gate_downloads(requested, want, weights).actions] == ["off", "on"]


def test_a_verification_only_download_says_so() -> None:
    want = desired(hub("m", pin=True))
    state = WeightsState("org/m", "a" * 40, False)  # every file there, not hashed since a change
    [action] = gate_downloads(plan(want, [], 0.0), want, {"m": state}).actions
    assert action.cause == "pinned, not running; verify org/m@aaaaaaaaaaaa before it starts"


def test_a_moved_revision_keeps_the_old_backend_until_the_new_files_are_there() -> None:
    model = hub("m", pin=True)
    running = instance(model, hash_="0ld0ld0ld0ld")
    want = desired(model)
    actions = plan(want, [running], 0.0)
    assert [a.kind for a in actions] == ["recreate"]

    gated = gate_downloads(actions, want, {"m": missing("m")})

    assert [a.kind for a in gated.actions] == ["download"]
    assert gated.actions[0].cause.startswith("spec changed")


def test_no_second_download_and_none_while_backing_off_or_unresolved() -> None:
    want = desired(hub("a", pin=True), hub("b", pin=True), hub("c", pin=True))
    weights = {
        "a": missing("a"),
        "b": missing("b"),
        "c": WeightsState("org/c", None, False, problem="offline and not cached"),
    }
    gated = gate_downloads(plan(want, [], 0.0), want, weights, downloading={"a"}, blocked={"b"})
    assert gated.actions == []
    assert gated.problems == {"c": "offline and not cached"}


def test_stops_and_path_sources_pass_through() -> None:
    local = desired_model("local", pin=True)
    gone = instance("gone")
    want = desired(local, hub("m"))
    actions = plan(want, [gone], 0.0)
    gated = gate_downloads(actions, want, {"m": READY})
    assert gated.actions == actions and {a.kind for a in actions} == {"start", "stop"}


@given(
    pins=st.lists(st.booleans(), min_size=1, max_size=5),
    ready=st.lists(st.booleans(), min_size=5, max_size=5),
    running=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_never_a_start_without_ready_weights(
    pins: list[bool], ready: list[bool], running: list[bool]
) -> None:
    models = [hub(f"m{i}", pin=pin) for i, pin in enumerate(pins)]
    want = desired(*models)
    actual = [
        instance(m, hash_="0ld0ld0ld0ld") for m, up in zip(models, running, strict=False) if up
    ]
    weights = {
        m.name: READY if ok else missing(m.name) for m, ok in zip(models, ready, strict=False)
    }
    gated = gate_downloads(plan(want, actual, 0.0), want, weights)
    for action in gated.actions:
        if action.kind in ("start", "recreate"):
            assert weights[action.model].ready
        if action.kind == "download":
            assert not weights[action.model].ready
    downloads = [a.model for a in gated.actions if a.kind == "download"]
    assert len(downloads) == len(set(downloads))
