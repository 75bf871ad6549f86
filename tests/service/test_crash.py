"""A backend SIGKILLed in the middle of a stream: the client's stream ends with an error event,
the model is Failed (crash backoff, ``Retry-After``), and a later request gets a new backend."""

from __future__ import annotations

import os
import re
import signal
import time

import openai
import pytest

from tests.helpers.manifests import fake_engine_doc, model_doc
from tests.service.conftest import MakeBox, node_doc, wait_until


def test_a_backend_killed_mid_stream(make_box: MakeBox) -> None:
    box = make_box(
        {
            "node.yaml": node_doc(resync="60s"),
            "engine.yaml": fake_engine_doc("fake", "--token-delay", "0.2"),
            "m.yaml": model_doc("m", stayWarm="10m"),
        }
    )
    box.start()
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
    with box.http() as http:
        refused = http.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "again"}]},
        )
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
