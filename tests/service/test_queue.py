"""Per-model concurrency and the priority queue, through ``modelplane run``: with
``maxConcurrency: 1`` waiting requests reach the backend one at a time, best priority first;
past ``Node.proxy.maxQueue`` the answer is 429 with ``Retry-After``."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from tests.helpers.manifests import fake_engine_doc, model_doc
from tests.service.conftest import Box, MakeBox, node_doc, wait_until


def queued(box: Box) -> int:
    return box.svc.model("q")["queued"]


def test_one_at_a_time_in_priority_order(make_box: MakeBox) -> None:
    box = make_box(
        {
            "node.yaml": node_doc(proxy={"maxQueue": 4}),
            "engine.yaml": fake_engine_doc("fake", "--token-delay", "0.1"),
            "q.yaml": model_doc("q", pin=True, maxConcurrency=1, priority="normal"),
        }
    )
    box.start()
    box.svc.wait_phase("q", "Ready")
    backend = box.backend("q")
    results: dict[str, int] = {}
    threads = []

    def send(tag: str, headers: dict[str, str] | None = None, **body: Any) -> None:
        payload = {"model": "q", "messages": [{"role": "user", "content": tag}], **body}

        def go() -> None:
            with box.http() as http:
                results[tag] = http.post(
                    "/v1/chat/completions", json=payload, headers=headers
                ).status_code

        thread = threading.Thread(target=go)
        thread.start()
        threads.append(thread)

    # a slow stream holds the only slot (30 tokens, 0.1 s apart)
    send("blocker", stream=True, max_tokens=30)
    wait_until(lambda: backend.stats()["in_flight"] == 1, what="blocker in flight")
    # four more wait, sent one after the other so their arrival order is known
    for n, (tag, headers, body) in enumerate(
        [
            ("low", {"x-priority": "low"}, {}),
            ("high", None, {"x_priority": "high"}),
            ("default", None, {}),  # the model's own: normal
            ("urgent", {"X-Priority": "urgent"}, {"x_priority": "batch"}),  # the header wins
        ],
        start=1,
    ):
        send(tag, headers, **body)
        wait_until(lambda n=n: queued(box) == n, what=f"{n} queued")
    with box.http() as http:
        full = http.post(
            "/v1/chat/completions",
            json={"model": "q", "messages": [{"role": "user", "content": "one too many"}]},
        )
    assert full.status_code == 429, full.text
    assert int(full.headers["retry-after"]) >= 1
    assert full.json()["error"]["code"] == "queue_full"
    assert "4 requests are already waiting" in full.json()["error"]["message"]

    for thread in threads:
        thread.join(60)
    assert results == dict.fromkeys(["blocker", "low", "high", "default", "urgent"], 200)
    seen = [r for r in backend.requests() if r["path"] == "/v1/chat/completions"]
    order = [r["body"]["messages"][0]["content"] for r in seen]
    assert order[-5:] == ["blocker", "urgent", "high", "default", "low"]
    assert backend.stats()["max_in_flight"] == 1
    for request in seen[-5:]:
        assert "x_priority" not in request["body"]  # modelplane's fields are not forwarded
        assert "x-priority" not in request["headers"]


def test_a_bad_priority_is_a_bad_request(make_box: MakeBox) -> None:
    box = make_box(
        {
            "node.yaml": node_doc(),
            "engine.yaml": fake_engine_doc("fake"),
            "q.yaml": model_doc("q", stayWarm="10m"),
        }
    )
    box.start()
    with httpx.Client(base_url=box.svc.url, timeout=30) as http:
        reply = http.post(
            "/v1/chat/completions",
            json={"model": "q", "messages": [], "x_priority": "whenever"},
        )
    assert reply.status_code == 400
    assert "whenever" in reply.json()["error"]["message"]
    assert box.svc.model("q")["phase"] == "Asleep"  # refused before waking anything
