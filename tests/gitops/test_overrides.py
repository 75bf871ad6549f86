"""``spec.suspend`` freezes a model as it is; a load by hand holds a model until it is unloaded or
its manifest changes (remembered across resyncs and restarts); ``status`` says so."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.gitops.support import backend_pid, cli, try_backend_pid, wait_for, write_box
from tests.helpers.manifests import ManifestDir, model_doc
from tests.helpers.service import ServiceProcess, start_service


def started(svc: ServiceProcess, model: str) -> list[str]:
    return [e["message"] for e in svc.events(model) if e["kind"] == "Starting"]


def chat(svc: ServiceProcess, model: str) -> int:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return svc.request("POST", "/v1/chat/completions", body)[0]


def test_suspend_freezes_a_model_as_it_is(tmp_path: Path, state: Path) -> None:
    manifests = ManifestDir(tmp_path / "manifests")
    write_box(manifests)
    manifests.write("a.yaml", model_doc("a", pin=True))
    manifests.write("b.yaml", model_doc("b", pin=True))  # b is the control: not suspended
    with start_service(manifests.root, state) as svc:
        svc.wait_phase("a", "Ready")
        svc.wait_phase("b", "Ready")
        a_pid, b_pid = backend_pid(svc, "a"), backend_pid(svc, "b")

        # suspended and changed in one edit: a keeps running its old spec; b, changed too, restarts
        manifests.write("a.yaml", model_doc("a", pin=True, suspend=True, args=["--tokens", "3"]))
        manifests.write("b.yaml", model_doc("b", pin=True, args=["--tokens", "3"]))
        wait_for(lambda: try_backend_pid(svc, "b") not in (None, b_pid), "b recreated", svc=svc)
        a = svc.model("a")
        assert (a["phase"], a["sync"]) == ("Ready", "Suspended")
        assert "suspend" in a["reason"]
        assert backend_pid(svc, "a") == a_pid
        assert len(started(svc, "a")) == 1

        # hands off by hand too
        for action in ("load", "unload"):
            code, body = svc.request("POST", f"/api/models/a/{action}")
            assert code == 409 and "suspended" in body["error"]["message"], body

        # its backend dies: a frozen model is not restarted (b, the control, is)
        b_pid = backend_pid(svc, "b")
        os.kill(a_pid, signal.SIGKILL)
        os.kill(b_pid, signal.SIGKILL)
        wait_for(lambda: len(started(svc, "b")) == 3, "b restarted after its crash", svc=svc)
        svc.wait_phase("b", "Ready")
        assert svc.model("a")["phase"] != "Ready"
        assert len(started(svc, "a")) == 1

        # lifting the suspension applies what the manifest says now
        manifests.write("a.yaml", model_doc("a", pin=True, args=["--tokens", "3"]))
        svc.wait_phase("a", "Ready")
        assert svc.model("a")["sync"] == "Synced"
        assert len(started(svc, "a")) == 2

        # a suspended model whose manifest is removed is stopped: the manifest is the truth
        manifests.write("b.yaml", model_doc("b", pin=True, suspend=True, args=["--tokens", "3"]))
        wait_for(lambda: svc.model("b")["sync"] == "Suspended", "b suspended", svc=svc)
        manifests.remove("b.yaml")
        wait_for(
            lambda: "b" not in {m["name"] for m in svc.status()["models"]}, "b stopped", svc=svc
        )
        assert any("removed from manifests" in e["message"] for e in svc.events("b"))
        assert svc.stop() == 0


def test_load_by_hand_holds_until_unloaded_or_the_manifest_changes(
    tmp_path: Path, state: Path
) -> None:
    manifests = ManifestDir(tmp_path / "manifests")
    write_box(manifests)
    manifests.write("w.yaml", model_doc("w", stayWarm="1s"))
    manifests.write("c.yaml", model_doc("c", stayWarm="1s"))  # the control: unloaded after 1s
    manifests.write("p.yaml", model_doc("p", pin=True))

    def control_unloads(svc: ServiceProcess) -> None:
        """c wakes on a request and is unloaded after its stayWarm: passes ran meanwhile."""
        assert chat(svc, "c") == 200
        svc.wait_phase("c", "Asleep")

    svc = start_service(manifests.root, state)
    with svc:
        code, body = svc.request("POST", "/api/models/p/unload")
        assert code == 409 and "pinned" in body["error"]["message"]

        code, body = svc.request("POST", "/api/models/w/load")
        assert code == 200 and body["phase"] == "Ready", body
        w = svc.model("w")
        assert "loaded by hand" in w["override"]
        w_pid = backend_pid(svc, "w")
        control_unloads(svc)
        assert svc.model("w")["phase"] == "Ready" and backend_pid(svc, "w") == w_pid
        assert svc.stop() == 0

    # the override is in the state database: a restart adopts w and keeps holding it
    held = json.loads(cli(state, "status", "--dir", manifests.root, "--json").stdout)
    assert "loaded by hand" in next(m for m in held["models"] if m["name"] == "w")["override"]
    svc = start_service(manifests.root, state)
    with svc:
        assert "loaded by hand" in svc.model("w")["override"]
        control_unloads(svc)
        assert svc.model("w")["phase"] == "Ready" and backend_pid(svc, "w") == w_pid
        assert len(started(svc, "w")) == 1, "adopted, not started again"

        # the next change of w's manifest (here a field that does not restart it) ends the hold
        manifests.write("w.yaml", model_doc("w", stayWarm="1s", priority="high"))
        wait_for(lambda: svc.model("w")["override"] == "", "override ended", svc=svc)
        ended = wait_for(
            lambda: [e["message"] for e in svc.events("w") if e["kind"] == "OverrideEnded"],
            "OverrideEnded",
            svc=svc,
        )
        assert ended == ["load by hand ended: its manifest changed"]
        svc.wait_phase("w", "Asleep")  # stayWarm applies again

        # unload ends a hold at once; nothing more is remembered: a request wakes it again
        assert svc.request("POST", "/api/models/w/load")[0] == 200
        assert "loaded by hand" in svc.model("w")["override"]
        code, body = svc.request("POST", "/api/models/w/unload")
        assert code == 200 and body["phase"] == "Asleep", body
        assert svc.model("w")["override"] == ""
        assert chat(svc, "w") == 200
        svc.wait_phase("w", "Asleep")  # and it goes back to sleep after its stayWarm
        assert svc.stop() == 0
