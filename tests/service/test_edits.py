"""Editing the manifest directory while ``modelplane run`` serves: the watcher picks the change
up, and only the models whose manifests changed are touched."""

from __future__ import annotations

import os

import openai
import pytest

from tests.helpers.manifests import fake_engine_doc, model_doc
from tests.service.conftest import Box, MakeBox, node_doc, wait_until


def pids(box: Box, *models: str) -> dict[str, int]:
    return {name: box.backend(name).pid for name in models}


def pid_now(box: Box, model: str) -> int | None:
    """The pid of the backend serving ``model`` now; None while there is none."""
    try:
        return box.backend(model).pid
    except (AssertionError, OSError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def chat(box: Box, model: str) -> str:
    reply = box.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}]
    )
    return reply.choices[0].message.content or ""


@pytest.fixture
def box(make_box: MakeBox) -> Box:
    box = make_box(
        {
            "node.yaml": node_doc(resync="60s"),
            "engine.yaml": fake_engine_doc("fake"),
            "a.yaml": model_doc("a", pin=True),
            "b.yaml": model_doc("b", pin=True),
        }
    )
    box.start()
    box.svc.wait_phase("a", "Ready")
    box.svc.wait_phase("b", "Ready")
    return box


def test_added_changed_and_removed_models(box: Box) -> None:
    before = pids(box, "a", "b")

    box.manifests.write("c.yaml", model_doc("c", pin=True, aliases=["see"]))
    box.svc.wait_phase("c", "Ready")
    assert chat(box, "see").startswith("c@")
    assert pids(box, "a", "b") == before

    box.manifests.write("b.yaml", model_doc("b", pin=True, args=["--tokens", "3"]))
    wait_until(lambda: pid_now(box, "b") not in (None, before["b"]), what="b restarted")
    assert len(chat(box, "b").split()) == 3  # the new args are in force
    assert not alive(before["b"])
    recreated = [e["message"] for e in box.events("b") if e["kind"] == "Starting"]
    assert "spec changed: args" in recreated[-1]
    c_pid = box.backend("c").pid
    assert pids(box, "a") == {"a": before["a"]} and alive(c_pid)

    box.manifests.remove("c.yaml")
    wait_until(lambda: not alive(c_pid), what="c stopped")
    with pytest.raises(openai.NotFoundError):
        chat(box, "c")
    assert [m["name"] for m in box.svc.status()["models"]] == ["a", "b"]
    assert box.backend("a").pid == before["a"]


def test_an_invalid_edit_changes_nothing_that_runs(box: Box) -> None:
    before = pids(box, "a", "b")
    path = box.manifests.write(
        "b.yaml", model_doc("b", pin=True, args=["--tokens", "3"], stayWarn="5m")
    )
    entry = wait_until(
        lambda: (m := box.svc.model("b"))["sync"] == "Stale" and m, what="b shown Stale"
    )
    assert f"{path}:" in entry["reason"] and "stayWarn" in entry["reason"], entry
    errors = box.svc.status()["errors"]
    assert len(errors) == 1 and errors[0].startswith(f"{path}:4:") and "stayWarm" in errors[0]
    assert entry["phase"] == "Ready"
    assert len(chat(box, "b").split()) == 8  # the last valid version (no --tokens 3) serves
    assert pids(box, "a", "b") == before
    invalid = [e["message"] for e in box.svc.events() if e["kind"] == "Invalid"]
    assert invalid and str(path) in invalid[-1]
