"""Node.notify: a failed start, the recovery and each applied generation reach a webhook the test
runs; webhooks that are down (a closed port, a server that never answers) slow nothing down."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gitops.support import kinds, node_doc, wait_for
from tests.helpers.manifests import ManifestDir, fake_engine_doc, model_doc
from tests.helpers.service import start_service
from tests.ops.test_notify import Hook, closed_port_url


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.close()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A server that accepts connections and never answers (each post waits for its timeout)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"


def received(hook: Hook) -> list[dict[str, Any]]:
    found = []
    while not hook.received.empty():
        found.append(hook.received.get_nowait())
    return found


def test_failed_and_recovered_reach_the_webhook_and_down_webhooks_slow_nothing(
    tmp_path: Path, state: Path, hook: Hook, silent_url: str
) -> None:
    manifests = ManifestDir(tmp_path / "manifests")
    notify = [{"url": hook.url}, {"url": closed_port_url()}, {"url": silent_url}]
    manifests.write("node.yaml", node_doc(notify=notify))
    manifests.write("engine.yaml", fake_engine_doc())
    manifests.write("f.yaml", model_doc("f", pin=True, args=["--exit-immediately", "1"]))
    got: list[dict[str, Any]] = []

    def until(kind: str, model: str | None = None) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            got.extend(received(hook))
            return next(
                (m for m in got if m["event"] == kind and m["data"]["model"] == model), None
            )

        return wait_for(check, f"a {kind} notification", svc=svc)

    with start_service(manifests.root, state) as svc:
        applied = until("Applied")
        assert applied["node"] == "test-box" and applied["data"]["message"].startswith(
            "generation 1"
        )
        failed = until("Failed", "f")
        assert "exit" in failed["data"]["message"]
        assert failed["text"].startswith("modelplane@test-box: Failed f: ")

        # the retries fail too; the team hears of the streak once
        wait_for(lambda: kinds(svc, "f").count("Failed") >= 2, "a second failure", svc=svc)

        # two webhooks are down (one holds each post for its 10 s timeout), and every change
        # below is a new generation notified to all three: reconciles stay quick
        for n in range(3):
            manifests.write("extra.yaml", model_doc(f"x{n}"))
            began = time.monotonic()
            code, body = svc.request("POST", "/api/reconcile")
            assert code == 200 and body["generation"] == n + 2
            assert time.monotonic() - began < 5.0, "a reconcile waited for a webhook"

        manifests.write("f.yaml", model_doc("f", pin=True))  # the fix
        recovered = until("Recovered", "f")
        assert "ready again" in recovered["data"]["message"]
        order = [(m["event"], m["data"]["model"]) for m in got]
        assert order.count(("Failed", "f")) == 1, order
        assert order.index(("Failed", "f")) < order.index(("Recovered", "f"))
        generations = [m["data"]["message"].split(":")[0] for m in got if m["event"] == "Applied"]
        assert generations == [f"generation {n}" for n in range(1, 6)]

        stats = svc.status()["notifications"]
        assert len(stats) == 3
        wait_for(
            lambda: sum(s["delivered"] for s in svc.status()["notifications"].values()) == len(got),
            "the delivery counters",
            svc=svc,
        )
        began = time.monotonic()
        assert svc.stop() == 0
        assert time.monotonic() - began < 20.0, "shutdown waited for the webhooks that are down"
