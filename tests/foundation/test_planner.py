"""Desired state (effective spec, spec hash) and the pure planner, rule by rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from reconciler.planning.desired import changed_fields
from reconciler.planning.planner import Activity, PruneRefused, plan

from .conftest import REPO
from .planning import desired, desired_model, instance

NOW = 1_000_000.0


def plan_strs(*args: object, **kwargs: object) -> list[str]:
    return [str(a) for a in plan(*args, **kwargs)]  # type: ignore[arg-type]


# --- spec hash ----------------------------------------------------------------------------------


def test_spec_hash_is_stable_across_processes() -> None:
    """No dict order or hash seed in it: a restarted modelplane computes the same hash."""
    model = desired_model("m", args=["--ctx-size", "8192"], env={"B": "2", "A": "1"}, gpus=[1, 0])
    code = (
        "from tests.foundation.planning import desired_model;"
        "print(desired_model('m', args=['--ctx-size', '8192'], env={'A': '1', 'B': '2'},"
        " gpus=[1, 0]).spec_hash)"
    )
    hashes = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert hashes == {model.spec_hash}
    assert len(model.spec_hash) == 12


@pytest.mark.parametrize(
    "change",
    [
        {"stay_warm": "1m"},
        {"priority": "batch"},
        {"aliases": ["gpt-4o-mini"]},
        {"max_concurrency": 1},
        {"pin": True},
    ],
)
def test_spec_hash_ignores_what_the_proxy_and_planner_read_live(change: dict) -> None:
    assert desired_model("m", **change).spec_hash == desired_model("m").spec_hash


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"args": ["--x"]}, ["args"]),
        ({"env": {"A": "1"}}, ["env"]),
        ({"gpus": [0]}, ["gpus"]),
        ({"gpus": "none"}, ["gpus"]),
        ({"engine": "vllm"}, ["engine.command", "engine.image", "engine.name"]),
        ({"source": {"path": "/elsewhere.gguf"}}, ["source"]),
        ({"runtime": "docker"}, ["runtime"]),
        ({"container": {"shmSize": "1GiB"}}, ["container"]),
    ],
)
def test_spec_hash_changes_with_what_a_backend_is_started_from(
    change: dict, fields: list[str]
) -> None:
    base, changed = desired_model("m"), desired_model("m", **change)
    assert changed.spec_hash != base.spec_hash
    assert changed_fields(base.effective, changed.effective) == fields


def test_effective_spec_is_json() -> None:
    model = desired_model("m", container={"shmSize": "1GiB"}, gpus=[0])
    assert json.loads(json.dumps(model.effective)) == model.effective


# --- causes -------------------------------------------------------------------------------------


def test_start_a_pinned_model_that_is_not_running() -> None:
    m = desired_model("m", pin=True)
    assert plan_strs(desired(m), [], NOW) == ["start m (pinned, not running)"]


def test_an_unpinned_model_is_not_started_on_apply() -> None:
    assert plan(desired(desired_model("m")), [], NOW) == []


def test_a_requested_model_is_started() -> None:
    m = desired_model("m")
    assert plan_strs(desired(m), [], NOW, {"m": Activity(wanted=True)}) == [
        "start m (requested, not running)"
    ]


def test_recreate_names_the_changed_fields() -> None:
    old = desired_model("m", pin=True)
    new = desired_model("m", pin=True, args=["--ctx-size", "8192"], env={"A": "1"})
    actions = plan(desired(new), [instance(old)], NOW)
    assert [str(a) for a in actions] == ["recreate m (spec changed: args, env)"]
    assert actions[0].instance is not None and actions[0].instance.spec == old.effective


def test_recreate_without_a_known_old_spec_says_only_spec_changed() -> None:
    new = desired_model("m", pin=True)
    old = instance("m", spec=None, hash_="feedfeedfeed")
    assert plan_strs(desired(new), [old], NOW) == ["recreate m (spec changed)"]


def test_a_running_model_that_matches_is_left_alone() -> None:
    m = desired_model("m", pin=True)
    assert plan(desired(m), [instance(m, started_at=0.0)], NOW) == []


def test_stop_a_model_removed_from_the_manifests() -> None:
    keep = desired_model("keep")
    gone = instance("gone", hash_="abcabcabcabc")
    actions = plan(desired(keep), [gone], NOW)
    assert [str(a) for a in actions] == ["stop gone (removed from manifests)"]
    assert actions[0].instance is gone


def test_an_exited_pinned_model_is_restarted_with_the_reason() -> None:
    m = desired_model("m", pin=True)
    dead = instance(m, "exited", exit_reason="killed by signal 9")
    actions = plan(desired(m), [dead], NOW)
    assert [str(a) for a in actions] == ["start m (pinned, killed by signal 9)"]
    assert actions[0].instance is dead  # the dead record is cleaned up by the start


def test_an_exited_unpinned_model_is_cleaned_up() -> None:
    m = desired_model("m")
    dead = instance(m, "exited", exit_reason="exited with code 3")
    assert plan_strs(desired(m), [dead], NOW) == ["stop m (clean up: exited with code 3)"]


def test_duplicate_instances_keep_the_running_one() -> None:
    m = desired_model("m", pin=True)
    dead, alive = instance(m, "exited"), instance(m)
    actions = plan(desired(m), [dead, alive], NOW)
    assert [(str(a), a.instance) for a in actions] == [("stop m (duplicate instance)", dead)]


# --- stayWarm -----------------------------------------------------------------------------------


def test_unload_an_idle_model_past_stay_warm() -> None:
    m = desired_model("m", stay_warm="10m")
    running = instance(m, started_at=NOW - 3600)
    use = {"m": Activity(last_used=NOW - 15 * 60)}
    assert plan_strs(desired(m), [running], NOW, use) == ["unload m (idle 15m > stayWarm 10m)"]


def test_idle_time_counts_from_the_start_when_never_used() -> None:
    m = desired_model("m", stay_warm="10m")
    assert plan(desired(m), [instance(m, started_at=NOW - 9 * 60)], NOW) == []
    assert plan_strs(desired(m), [instance(m, started_at=NOW - 11 * 60)], NOW) == [
        "unload m (idle 11m > stayWarm 10m)"
    ]


def test_no_unload_within_stay_warm() -> None:
    m = desired_model("m", stay_warm="10m")
    use = {"m": Activity(last_used=NOW - 5 * 60)}
    assert plan(desired(m), [instance(m, started_at=NOW - 3600)], NOW, use) == []


def test_no_unload_with_requests_in_flight() -> None:
    m = desired_model("m", stay_warm="0")
    use = {"m": Activity(in_flight=1, last_used=NOW - 3600)}
    assert plan(desired(m), [instance(m, started_at=NOW - 3600)], NOW, use) == []


def test_a_pinned_model_is_never_unloaded() -> None:
    m = desired_model("m", stay_warm="0", pin=True)
    use = {"m": Activity(last_used=NOW - 86400)}
    assert plan(desired(m), [instance(m, started_at=NOW - 86400)], NOW, use) == []


def test_an_idle_model_whose_spec_changed_is_unloaded_not_recreated() -> None:
    """Recreating a backend only to unload it on the next pass wastes a load."""
    old = desired_model("m", stay_warm="1m")
    new = desired_model("m", stay_warm="1m", args=["--x"])
    running = instance(old, started_at=NOW - 3600)
    assert plan_strs(desired(new), [running], NOW) == ["unload m (idle 1h > stayWarm 1m)"]


# --- suspend, unmanaged, prune guard ------------------------------------------------------------


def test_a_suspended_model_is_left_exactly_as_it_is() -> None:
    old = desired_model("m", pin=True)
    new = desired_model("m", pin=True, suspend=True, args=["--x"])
    for actual in ([], [instance(old)], [instance(old, "exited")], [instance(new, started_at=0)]):
        assert plan(desired(new), actual, NOW) == []


def test_unmanaged_instances_are_never_touched() -> None:
    m = desired_model("m", pin=True)
    foreign = [
        instance("m", managed=False),
        instance("other", managed=False),
        instance("dead", "exited", managed=False),
    ]
    assert plan_strs(desired(m), foreign, NOW) == ["start m (pinned, not running)"]
    assert plan(desired(), foreign, NOW) == []  # nothing managed: no prune, no refusal


def test_prune_refuses_to_stop_every_model() -> None:
    running = [instance("a", hash_="aaaaaaaaaaaa"), instance("b", hash_="bbbbbbbbbbbb")]
    with pytest.raises(PruneRefused, match=r"refusing to stop every model \(a, b\).*--allow-empty"):
        plan(desired(), running, NOW)
    actions = plan(desired(), running, NOW, allow_empty=True)
    assert [str(a) for a in actions] == [
        "stop a (removed from manifests)",
        "stop b (removed from manifests)",
    ]


def test_prune_of_some_models_needs_no_flag() -> None:
    keep = desired_model("keep")
    assert plan_strs(desired(keep), [instance("gone")], NOW) == [
        "stop gone (removed from manifests)"
    ]


def test_actions_come_in_a_stable_order() -> None:
    ms = [desired_model(n, pin=True) for n in ("c", "a", "b")]
    assert [a.model for a in plan(desired(*ms), [], NOW)] == ["a", "b", "c"]


def test_an_unwanted_starting_instance_whose_spec_changed_is_stopped_not_recreated() -> None:
    old = desired_model("m", stay_warm="1m")
    new = desired_model("m", stay_warm="1m", args=["--x"])
    starting = instance(old, "starting", started_at=NOW)
    use = {"m": Activity(last_used=NOW - 3600)}
    assert plan_strs(desired(new), [starting], NOW, use) == ["unload m (idle 1h > stayWarm 1m)"]
    use = {"m": Activity(last_used=NOW - 3600, wanted=True)}
    assert plan_strs(desired(new), [starting], NOW, use) == ["recreate m (spec changed: args)"]
