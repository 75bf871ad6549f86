"""Trying to break ``modelplane run`` (issue 11): live edits that would open it to the network,
empty it or need a restart; a second modelplane on its state directory; hostile manifests; a
database damaged under it. Each must end in a clear error that loses nothing."""

from __future__ import annotations

import concurrent.futures
import json
import time
from typing import Any

import httpx
import pytest

from tests.helpers.backend import free_port
from tests.helpers.cli import run_cli
from tests.helpers.database import damage_table
from tests.helpers.manifests import fake_engine_doc, model_doc
from tests.helpers.privileges import permission_bits_bind
from tests.helpers.service import start_service
from tests.service.conftest import Box, MakeBox, hash_key, node_doc, wait_until

MODELS = {
    "node.yaml": node_doc(resync="60s"),
    "engine.yaml": fake_engine_doc("fake"),
    "models/pinned.yaml": model_doc("pinned", pin=True, aliases=["gpt-4o-mini"]),
    "models/lazy.yaml": model_doc("lazy", stayWarm="10m"),
}


def chat(box: Box, model: str, timeout: float = 60) -> httpx.Response:
    with box.http(timeout=timeout) as client:
        return client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )


def answer(box: Box, model: str) -> str:
    reply = chat(box, model)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


def events(box: Box, kind: str) -> list[dict[str, Any]]:
    return [e for e in box.svc.events() if e["kind"] == kind]


@pytest.fixture
def box(make_box: MakeBox) -> Box:
    box = make_box(MODELS)
    box.start()
    box.svc.wait_phase("pinned", "Ready")
    return box


# --- 1: API keys are never removed live from a listener on the network ---------------------------


def test_removing_every_api_key_on_a_public_listener_is_refused(make_box: MakeBox) -> None:
    """It used to leave ``run`` on 0.0.0.0 open to anyone, admin API included, silently."""
    keys = [{"name": "ops", "sha256": hash_key("first-key")}]
    box = make_box({**MODELS, "node.yaml": node_doc(resync="60s", apiKeys=keys)}, "first-key")
    port = free_port()
    box.start("--listen", f"0.0.0.0:{port}", port=port)  # (the last --listen wins)
    box.svc.wait_phase("pinned", "Ready")
    assert httpx.get(f"{box.svc.url}/v1/models").status_code == 401

    box.manifests.write("node.yaml", node_doc(resync="60s"))  # every key removed
    wait_until(lambda: events(box, "ApiKeysKept"), what="the removal refused")
    for path in ("/v1/models", "/api/status"):
        assert httpx.get(box.svc.url + path).status_code == 401, path
    assert answer(box, "pinned").startswith("pinned@")  # (with the key still in force)
    status = box.svc.status()
    assert any(
        w.startswith("refusing to remove every API key while listening on 0.0.0.0")
        for w in status["warnings"]
    ), status["warnings"]
    assert "refusing to remove every API key" in box.svc.log_text()

    # Other keys apply live, as before.
    box.manifests.write(
        "node.yaml",
        node_doc(resync="60s", apiKeys=[{"name": "new", "sha256": hash_key("second-key")}]),
    )
    new = {"authorization": "Bearer second-key"}
    wait_until(
        lambda: httpx.get(f"{box.svc.url}/v1/models", headers=new).status_code == 200,
        what="the new key",
    )
    box.api_key = box.svc.api_key = "second-key"
    assert httpx.get(f"{box.svc.url}/v1/models").status_code == 401
    assert box.svc.status()["warnings"] == []


# --- 2: an emptied or unreadable directory keeps every model reachable ---------------------------


def _every_model_answers(box: Box) -> None:
    listed = {m.id for m in box.client().models.list()}
    assert {"pinned", "gpt-4o-mini", "lazy"} <= listed
    assert answer(box, "gpt-4o-mini").startswith("pinned@")
    assert answer(box, "lazy").startswith("lazy@")  # woken, though no file names it now


def test_an_emptied_directory_keeps_every_model_reachable(box: Box) -> None:
    """The prune guard kept the processes, but /v1/models was empty and every request 404."""
    pid = box.backend("pinned").pid
    for relpath in MODELS:
        box.manifests.remove(relpath)
    wait_until(lambda: events(box, "PruneRefused"), what="the prune refused")
    _every_model_answers(box)
    refusal = events(box, "PruneRefused")[-1]["message"]
    assert refusal.startswith("refusing to stop every model (lazy, pinned)")
    row = box.svc.model("pinned")
    assert (row["phase"], row["sync"]) == ("Ready", "Stale")
    assert "no Model manifest in this directory" in row["reason"]
    assert box.backend("pinned").pid == pid

    # A restart on the empty directory keeps the last set too (from the database).
    box.svc.stop()
    box.start()
    box.svc.wait_phase("pinned", "Ready")
    _every_model_answers(box)
    assert box.backend("pinned").pid == pid

    for relpath, text in MODELS.items():
        box.manifests.write(relpath, text)
    wait_until(lambda: box.svc.model("pinned")["sync"] == "Synced", what="the files back")
    assert box.backend("pinned").pid == pid


def test_an_unreadable_directory_keeps_every_model_reachable(make_box: MakeBox) -> None:
    box = make_box(MODELS)
    box.start(prefix=permission_bits_bind())  # (as root, chmod 0 alone would not stop a read)
    box.svc.wait_phase("pinned", "Ready")
    pid = box.backend("pinned").pid
    root = box.manifests.root
    root.chmod(0)
    try:
        wait_until(
            lambda: any("cannot read this folder" in e for e in box.svc.status()["errors"]),
            what="the unreadable directory reported",
        )
        assert box.svc.status()["errors"] == [
            f"{root}:1:1: cannot read this folder: Permission denied"
        ]
        _every_model_answers(box)
        assert box.svc.model("lazy")["sync"] == "Stale"
    finally:
        root.chmod(0o755)
    wait_until(lambda: box.svc.model("pinned")["sync"] == "Synced", what="readable again")
    assert box.backend("pinned").pid == pid


# --- 3: one modelplane per state directory -------------------------------------------------------


def test_a_second_run_or_an_apply_on_the_same_state_directory_is_refused(box: Box) -> None:
    """Two of them started duplicate backends (each holding VRAM) that `down` could not see."""
    holder = box.svc.process.pid
    busy = f"another modelplane (pid {holder}) holds {box.state_dir}"
    second = start_service(box.manifests.root, box.state_dir, wait=False)
    assert second.process.wait(60) == 1
    assert busy in second.log_text()

    cwd = box.state_dir.parent
    applied = run_cli("apply", box.manifests.root, cwd=cwd, state_dir=box.state_dir)
    assert applied.code == 1
    assert f"error: {busy}" in applied.stderr
    assert f"it is the modelplane run serving {box.svc.url}" in applied.stderr
    status = run_cli("status", "--dir", box.manifests.root, cwd=cwd, state_dir=box.state_dir)
    assert status.code == 0, status.output  # read-only commands never wait for the lock
    assert len([m for m in box.svc.status()["models"] if m["phase"] == "Ready"]) == 1


# --- 4 and 5: hostile manifests neither jam the loop nor stall requests --------------------------


def test_a_300_level_document_does_not_jam_the_service(box: Box) -> None:
    """A RecursionError out of the pass made every later change go unapplied, with no error in
    /api/status and /readyz still ok."""
    deep = "apiVersion: modelplane/v1\nkind: Model\nmetadata: {name: deep}\nspec:\n"
    deep += "  source: {path: /x}\n  env: " + "[" * 300 + "]" * 300 + "\n"
    box.manifests.write("deep.yaml", deep)
    path = box.manifests.path("deep.yaml")
    wait_until(
        lambda: f"{path}:6:70: nested deeper than 64 levels" in box.svc.status()["errors"],
        what="the error in /api/status",
    )
    box.manifests.write("models/later.yaml", model_doc("later", pin=True))
    box.svc.wait_phase("later", "Ready")
    assert answer(box, "later").startswith("later@")


def _engines(count: int) -> str:
    """Valid Engine documents, slow to parse (each a YAML document) and cheap once read."""
    one = "apiVersion: modelplane/v1\nkind: Engine\nmetadata: {name: e%d}\nspec: {command: [x]}\n"
    return "---\n".join(one % i for i in range(count))


def test_requests_are_answered_while_a_large_manifest_is_read(box: Box) -> None:
    """A pass used to parse on the proxy's event loop: a large file stalled every request for
    as long as it took (13 to 22 s for 1 MiB on the 2-core machine)."""
    before = box.svc.status()["generation"]
    text = _engines(8000)  # about 700 KiB: within the limit, seconds to read
    assert len(text) < 2**20
    box.manifests.write("engines.yaml", text)
    time.sleep(1.5)  # past the watcher's debounce: the pass is reading it now
    answered = []
    for _ in range(5):
        reply = chat(box, "pinned", timeout=5)  # generous: a few ms when nothing stalls
        answered.append(reply.status_code)
    still_reading = box.svc.status()["generation"] == before
    assert answered == [200] * 5
    assert still_reading, "the file was read before the requests: make it larger"
    wait_until(lambda: box.svc.status()["generation"] != before, 300, "the file read")
    assert box.svc.status()["errors"] == []


# --- 6: a database damaged under a running service turns /readyz red -----------------------------


def test_a_database_damaged_while_serving_turns_readyz_red(box: Box) -> None:
    assert box.svc.request("GET", "/readyz")[0] == 200
    damage_table(box.state_dir / "modelplane.db", "events")
    box.manifests.write("models/new.yaml", model_doc("new"))  # its pass records an event

    def red() -> Any:
        code, body = box.svc.request("GET", "/readyz")
        return code == 503 and body

    body = wait_until(red, what="/readyz red")
    assert "is corrupt" in str(body) and "modelplane reset-db" in str(body)
    assert answer(box, "pinned").startswith("pinned@")  # what runs keeps serving


# --- 10: Node settings fixed at start say so ----------------------------------------------------


def test_node_settings_that_need_a_restart_say_so(box: Box) -> None:
    """proxy.accessLog (and maxBodySize, maxQueue, queueTimeout, dockerHost, git) changed
    silently nothing until a restart."""
    box.manifests.write(
        "node.yaml", node_doc(resync="60s", proxy={"accessLog": True, "maxQueue": 3})
    )
    wait_until(lambda: events(box, "RestartNeeded"), what="the RestartNeeded event")
    expected = (
        "Node.spec.proxy.maxQueue (256 → 3), Node.spec.proxy.accessLog (False → True): "
        "needs a restart of modelplane run to apply"
    )
    assert events(box, "RestartNeeded")[-1]["message"] == expected
    assert expected in box.svc.status()["warnings"]
    assert expected in box.svc.log_text()
    cwd = box.state_dir.parent
    status = run_cli("status", "--dir", box.manifests.root, cwd=cwd, state_dir=box.state_dir)
    assert f"warning: {expected}" in status.stderr

    box.manifests.write("node.yaml", MODELS["node.yaml"])  # undone: nothing to restart for
    wait_until(lambda: expected not in box.svc.status()["warnings"], what="the warning gone")


# --- 8: a backend dying in the middle of an event ------------------------------------------------


def test_a_backend_dying_mid_event_gets_a_whole_error_event(make_box: MakeBox) -> None:
    """The error event was glued to the half-written one: ``data: {"chodata: {"error": …}``."""
    crash = ("--crash-after", "1", "--crash-mid-stream", "--crash-mid-event")
    box = make_box({**MODELS, "engine.yaml": fake_engine_doc("fake", *crash)})
    box.start()
    box.svc.wait_phase("pinned", "Ready")
    body = {"model": "pinned", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with box.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200
        text = "".join(reply.iter_text())
    events = [e for e in text.split("\n\n") if e.strip()]
    assert all(e.count("data: ") == 1 for e in events), events  # nothing glued together
    *_, half, error = events
    assert half.startswith("data: {") and not half.endswith("}")  # as the backend left it
    assert error.startswith('data: {"error": ')
    message = json.loads(error[len("data: ") :])["error"]["message"]
    assert "pinned" in message


# --- requestTimeout and idleTimeout --------------------------------------------------------------


def test_a_backend_that_never_answers_gets_504_after_request_timeout(make_box: MakeBox) -> None:
    """The read timeout was None: a backend that accepts and never answers held its slots
    forever."""
    box = make_box(
        {
            **MODELS,
            "engine.yaml": fake_engine_doc("fake", "--request-delay", "600"),
            "models/pinned.yaml": model_doc(
                "pinned", pin=True, maxConcurrency=1, requestTimeout="1s"
            ),
        }
    )
    box.start()
    box.svc.wait_phase("pinned", "Ready")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # one slot: the second one queues
        replies = list(pool.map(lambda _: chat(box, "pinned", timeout=60), range(2)))
    for reply in replies:
        assert reply.status_code == 504, reply.text
        error = reply.json()["error"]
        assert error["message"] == (
            "pinned did not answer within 1s (requestTimeout); the request was abandoned"
        )
        assert error["code"] == "timeout"
    wait_until(lambda: len(events(box, "Timeout")) == 2, what="two Timeout events")
    assert box.svc.model("pinned")["phase"] == "Ready"  # slow is not broken


def test_a_stream_silent_for_longer_than_idle_timeout_ends_with_an_error(make_box: MakeBox) -> None:
    box = make_box(
        {
            **MODELS,
            "engine.yaml": fake_engine_doc("fake", "--token-delay", "600"),
            "models/pinned.yaml": model_doc("pinned", pin=True, idleTimeout="1s"),
        }
    )
    box.start()
    box.svc.wait_phase("pinned", "Ready")
    body = {"model": "pinned", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with box.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200
        text = "".join(reply.iter_text())
    events_seen = [e for e in text.split("\n\n") if e.strip()]
    assert '"content":' in events_seen[0]  # what came before the silence passed through
    error = json.loads(events_seen[-1][len("data: ") :])["error"]
    assert error["message"] == ("pinned sent nothing for 1s (idleTimeout); the stream was ended")
    wait_until(lambda: events(box, "Timeout"), what="the Timeout event")
