"""SIGTERM while a stream is open: the stream completes, ``modelplane run`` exits 0 and leaves
the backend running; the next ``run`` adopts it (same process, no new start) and its idle clock
goes on from the database."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx

from tests.helpers.manifests import fake_engine_doc, model_doc
from tests.service.conftest import MakeBox, node_doc


def follow_events(url: str, connected: threading.Event) -> None:
    """Read /api/events?follow=1 until the server ends the stream."""
    with httpx.stream("GET", url + "/api/events?follow=1", timeout=60) as reply:
        connected.set()
        for _ in reply.iter_lines():
            pass


def test_sigterm_drains_a_stream_and_the_next_run_adopts_the_backend(make_box: MakeBox) -> None:
    box = make_box(
        {
            "node.yaml": node_doc(),
            "engine.yaml": fake_engine_doc("fake", "--token-delay", "0.1"),
            "s.yaml": model_doc("s", stayWarm="10m"),
        }
    )
    first = box.start("--grace", "120")
    client = box.client()
    client.chat.completions.create(model="s", messages=[{"role": "user", "content": "wake"}])
    pid = box.backend("s").pid
    time.sleep(2)  # the start lies well before the end of the last request
    connected = threading.Event()
    follower = threading.Thread(target=follow_events, args=(first.url, connected))
    follower.start()  # an endless stream must not hold up the stop
    assert connected.wait(10)

    stream = client.chat.completions.create(
        model="s", messages=[{"role": "user", "content": "x"}], stream=True, max_tokens=30
    )
    tokens = 0
    finish = None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            tokens += 1
            if tokens == 1:
                first.process.send_signal(signal.SIGTERM)
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    ended = time.time()
    assert (tokens, finish) == (30, "length")
    assert first.process.wait(30) == 0, first.log_text()  # well within its --grace 120
    follower.join(5)
    assert not follower.is_alive()
    os.kill(pid, 0)  # the backend still runs

    time.sleep(2)  # the idle clock keeps going while nothing runs
    second = box.start()
    entry = second.model("s")
    idle_since_end = time.time() - ended
    assert entry["phase"] == "Ready" and box.backend("s").pid == pid
    kinds = [e["kind"] for e in box.events("s")]
    assert kinds.count("Starting") == 1 and kinds.count("Started") == 1, kinds
    # counted from the end of the stream: not reset by the restart (≈0), and not from the
    # start of the backend (≥ 5 s earlier)
    assert idle_since_end - 1.5 <= entry["idleFor"] <= idle_since_end + 1.5, entry
    reply = client.with_options(base_url=second.base_url).chat.completions.create(
        model="s", messages=[{"role": "user", "content": "again"}]
    )
    assert f"pid={pid}" in (reply.choices[0].message.content or "")
