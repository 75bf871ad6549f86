"""Backends that fail: one SIGKILLed in the middle of a stream (the client's stream ends with an
error event, the model is Failed with a crash backoff and ``Retry-After``, a later request gets a
new backend), one that exits at start, one that never gets healthy."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.helpers.manifests import fake_engine_doc, model_doc
from tests.service.conftest import Box, module_box, node_doc, wait_until


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    docs = {
        "node.yaml": node_doc(resync="60s"),
        "engines.yaml": "---\n".join(
            [
                fake_engine_doc("fake", "--token-delay", "0.2"),
                fake_engine_doc("dies", "--exit-immediately", "7"),
                fake_engine_doc("sick", "--fail-health"),
            ]
        ),
        "models.yaml": "---\n".join(
            [
                model_doc("m", stayWarm="10m"),
                model_doc("dies", engine="dies"),
                model_doc("sick", engine="sick", startupTimeout="2s"),
            ]
        ),
    }
    yield from module_box(tmp_path_factory, docs)


def ask(box: Box, model: str) -> httpx.Response:
    with box.http() as http:
        return http.post(
            "/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "again"}]},
        )


def test_a_backend_killed_mid_stream(box: Box) -> None:
    client = box.client()
    stream = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True, max_tokens=100
    )
    killed = None
    received = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                received.append(delta)
            if len(received) == 2:
                killed = box.backend("m").pid
                os.kill(killed, signal.SIGKILL)
    assert killed is not None and len(received) < 100
    assert "backend of `m` failed" in caught.value.message, caught.value.message

    # Failed at once; the next pass finds the process gone and counts the crash (backoff)
    failed = wait_until(
        lambda: (m := box.svc.model("m"))["phase"] == "Failed" and m["retryAt"] and m,
        what="m Failed with a retry time",
    )
    assert re.search(r"killed by signal 9|process \d+ is gone", failed["reason"]), failed
    refused = ask(box, "m")
    assert refused.status_code == 503, refused.text
    retry_after = int(refused.headers["retry-after"])
    assert 1 <= retry_after <= 10
    assert "m failed" in refused.json()["error"]["message"]

    time.sleep(retry_after)
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert "echo: x" in (reply.choices[0].message.content or "")
    assert box.backend("m").pid != killed
    kinds = [e["kind"] for e in box.events("m")]
    assert kinds.count("Started") == 2, kinds


def test_a_backend_that_exits_at_start(box: Box) -> None:
    failed = ask(box, "dies")
    assert failed.status_code == 502, failed.text
    message = failed.json()["error"]["message"]
    assert "exited with code 7" in message
    assert "simulated failure (--exit-immediately 7)" in message  # the backend's own log line
    assert int(failed.headers["retry-after"]) >= 1
    backing_off = ask(box, "dies")  # the same failure until the backoff has passed
    assert backing_off.status_code == 503
    assert "next start in" in backing_off.json()["error"]["message"]
    assert box.svc.model("dies")["phase"] == "Failed"


def test_a_backend_that_never_gets_healthy(box: Box) -> None:
    failed = ask(box, "sick")
    assert failed.status_code == 502, failed.text
    message = failed.json()["error"]["message"]
    assert "did not answer 200 within 2s (startupTimeout)" in message
    assert "fakebackend: listening on" in message  # its log lines say it did start
    entry = box.svc.model("sick")
    assert entry["phase"] == "Failed" and entry["endpoint"] is None  # and it was stopped
