"""The pure parts of the GitOps wiring: which events notify, when an override ends, what status
and systemd show, a held model in the planner, and two manifest roots read as one set."""

from __future__ import annotations

from pathlib import Path

from reconciler.control.overrides import ended, manifest_digest
from reconciler.control.systemd_status import summary_line
from reconciler.gitops.applied import applied, applied_line, dirty_warning
from reconciler.gitops.worktree import GitInfo
from reconciler.manifests import manifest_set as manifest_sets
from reconciler.ops.alerts import classify
from reconciler.planning.planner import Activity, plan
from reconciler.state.store import Event, Generation, Override
from tests.foundation.planning import desired, desired_model, instance
from tests.helpers.manifests import ManifestDir, fake_engine_doc, model_doc

NOW = 1_000_000.0


def event(kind: str, model: str | None = None, message: str = "m") -> Event:
    return Event(1, NOW, model, kind, message)


def test_notifications_failed_once_per_streak_then_recovered() -> None:
    failing: set[str] = set()
    assert classify(event("Applied", None, "generation 1"), failing) == (
        "Applied",
        {"model": None, "message": "generation 1", "event": "Applied"},
    )
    assert classify(event("Failed", "f"), failing)[0] == "Failed"  # type: ignore[index]
    assert classify(event("Failed", "f"), failing) is None  # the same streak
    assert classify(event("Crashed", "f"), failing) is None  # a crash continues it
    assert classify(event("Failed", "g"), failing)[0] == "Failed"  # type: ignore[index]
    assert classify(event("Recovered", "f"), failing)[0] == "Recovered"  # type: ignore[index]
    assert classify(event("Failed", "f"), failing)[0] == "Failed"  # type: ignore[index]
    assert classify(event("Applied"), failing) is not None and failing == set()
    assert classify(event("Failed", "g"), failing) is not None  # news again after a generation
    assert classify(event("Crashed", "h"), failing)[0] == "Failed"  # type: ignore[index]
    for kind in ("Invalid", "PruneRefused", "GitSyncFailed", "RuntimeUnavailable"):
        assert classify(event(kind), failing)[0] == "Failed"  # type: ignore[index]
    assert classify(event("Unschedulable", "u"), failing)[0] == "Unschedulable"  # type: ignore[index]
    for kind in ("Started", "Stopped", "Unloaded", "Override", "BackendFailed"):
        assert classify(event(kind, "f"), failing) is None


def test_an_override_ends_when_its_models_manifest_changes_or_goes() -> None:
    body = {"spec": {"stayWarm": "1s"}}
    digest = manifest_digest(body, "hash1")
    assert digest == manifest_digest({"spec": {"stayWarm": "1s"}}, "hash1")
    assert digest != manifest_digest({"spec": {"stayWarm": "2s"}}, "hash1")  # any field
    assert digest != manifest_digest(body, "hash2")  # its Engine changed
    overrides = {
        "same": Override("same", "load", digest, NOW),
        "edited": Override("edited", "load", digest, NOW),
        "removed": Override("removed", "load", digest, NOW),
    }
    digests = {"same": digest, "edited": manifest_digest(body, "hash2")}
    assert ended(overrides, digests) == {
        "edited": "its manifest changed",
        "removed": "its manifest was removed",
    }


def test_a_held_model_runs_like_a_pinned_one() -> None:
    m = desired_model("m", stay_warm="1m")
    held = {"m": Activity(held=True, last_used=NOW - 3600)}
    assert [str(a) for a in plan(desired(m), [], NOW, held)] == [
        "start m (loaded by hand, not running)"
    ]
    running = instance(m, started_at=NOW - 3600)
    assert plan(desired(m), [running], NOW, held) == []  # idle 1h > stayWarm 1m: kept
    crashed = instance(m, "exited", started_at=NOW - 3600)
    assert [str(a) for a in plan(desired(m), [crashed], NOW, held)] == [
        "start m (loaded by hand, exited with code 1)"
    ]
    assert [a.kind for a in plan(desired(m), [running], NOW, {})] == ["unload"]


def generation(**kw: object) -> Generation:
    values: dict[str, object] = {
        "id": 3,
        "time": NOW,
        "digest": "d",
        "git_commit": "0123456789abcdef0123",
        "git_branch": "main",
        "git_dirty": False,
        "outcome": "ok",
        "summary": {"git": {"subject": "add qwen"}},
    }
    values.update(kw)
    return Generation(**values)  # type: ignore[arg-type]


def test_applied_line_and_warning() -> None:
    assert applied_line(None) == "nothing applied yet"
    assert applied_line(generation()).startswith("applied 0123456789ab (add qwen) at ")
    dirty = applied_line(generation(git_dirty=True))
    assert dirty.startswith("applied 0123456789ab (add qwen) + uncommitted changes at ")
    assert "not in a git repository" in applied_line(generation(git_commit=None))
    body = applied(generation())
    assert body is not None and body["subject"] == "add qwen" and body["pulled"] is False
    info = GitInfo(Path("/r"), "sha", "main", "s", True, ("m/a.yaml", "m/b.yaml"))
    assert dirty_warning(info) == (
        "uncommitted changes in the manifests directory (applied as they are, not in any "
        "commit): m/a.yaml, m/b.yaml"
    )
    assert dirty_warning(None) is None
    assert dirty_warning(GitInfo(Path("/r"), "sha", "main", "s", False)) is None


def test_systemd_status_line() -> None:
    phases = {"a": "Ready", "b": "Asleep", "c": "Starting", "d": "Ready"}
    assert summary_line(phases, 3, "0123456789abcdef") == (
        "generation 3 (0123456789ab): 2 ready, 1 asleep, 0 failed, 1 starting"
    )
    assert summary_line({}, 0, None) == "generation 0: 0 ready, 0 asleep, 0 failed"


def test_two_roots_are_one_set_and_a_name_in_both_is_a_duplicate(tmp_path: Path) -> None:
    boot, clone = ManifestDir(tmp_path / "boot"), ManifestDir(tmp_path / "clone")
    boot.write("engine.yaml", fake_engine_doc())
    clone.write("a.yaml", model_doc("a"))
    result = manifest_sets.load(boot.root, extra_roots=[clone.root])
    assert set(result.models) == {"a"} and not result.errors
    boot.write("a.yaml", model_doc("a", args=["--x"]))
    result = manifest_sets.load(boot.root, extra_roots=[clone.root])
    (error,) = result.errors
    assert "duplicate Model name" in str(error)
    assert set(result.models) == {"a"}
