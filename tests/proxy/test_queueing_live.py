"""Queueing through the real proxy: one slot, priority order, bounds."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest

from proxy import ProxySettings
from tests.proxy.conftest import MakeProxy, Proxy
from tests.proxy.fakegateway import FakeModel
from tests.proxy.util import assert_balanced, chat_body, wait_until


def queued(proxy: Proxy, model: str) -> int:
    status = proxy.http().get("/api/status").json()
    return next(m["queued"] for m in status["models"] if m["name"] == model)


def send_in_background(proxy: Proxy, body: dict, headers: dict | None = None) -> threading.Thread:
    results: list[httpx.Response] = []

    def run() -> None:
        with proxy.http() as http:
            results.append(http.post("/v1/chat/completions", json=body, headers=headers))

    thread = threading.Thread(target=run, daemon=True)
    thread.results = results  # type: ignore[attr-defined]
    thread.start()
    return thread


def test_one_slot_serves_waiters_by_priority_then_arrival(make_proxy: MakeProxy) -> None:
    # Streams are slow (0.1 s a token), plain replies instant: a long stream holds the only
    # slot while the others queue up.
    model = FakeModel("q", backend_args=("--token-delay", "0.1"), max_concurrency=1)
    proxy = make_proxy([model])
    proxy.client().chat.completions.create(
        model="q", messages=[{"role": "user", "content": "warm"}]
    )
    # 8 s of stream: room to queue the seven others one by one even on a loaded machine (with
    # 3 s the first sometimes ended before the last was queued, and that one went ahead).
    threads = [send_in_background(proxy, chat_body("q", "first", stream=True, max_tokens=80))]
    wait_until(lambda: proxy.backend("q").stats()["in_flight"] == 1, what="first in flight")
    waiters = [
        ("low-header", {}, {"X-Priority": "low"}),
        ("urgent-body", {"x_priority": "urgent"}, None),
        ("normal-1", {}, None),
        ("high-int-header", {}, {"X-Priority": "3"}),
        ("batch-body", {"x_priority": "batch", "x_trace": "t-1"}, None),
        ("normal-2", {}, None),
        ("urgent-int-body", {"x_priority": 4}, None),
    ]
    for n, (text, extra, headers) in enumerate(waiters, start=1):
        threads.append(send_in_background(proxy, chat_body("q", text, **extra), headers))
        wait_until(lambda n=n: queued(proxy, "q") == n, what=f"{n} queued")
    for thread in threads:
        thread.join(30)
    assert all(t.results[0].status_code == 200 for t in threads)  # type: ignore[attr-defined]
    history = proxy.backend("q").get_json("/debug/requests")
    order = [r["body"]["messages"][0]["content"] for r in history]
    assert order == [
        "warm",
        "first",
        "urgent-body",
        "urgent-int-body",
        "high-int-header",
        "normal-1",
        "normal-2",
        "low-header",
        "batch-body",
    ]
    assert proxy.backend("q").stats()["max_in_flight"] == 1
    # modelplane's own fields and header never reach the backend.
    assert all(not k.startswith("x_") for r in history for k in r["body"])
    assert all("x-priority" not in r["headers"] for r in history)
    assert_balanced(proxy.gateway)


def test_a_full_queue_is_429_with_retry_after(make_proxy: MakeProxy) -> None:
    model = FakeModel("q", backend_args=("--request-delay", "1.0"), max_concurrency=1)
    proxy = make_proxy([model], ProxySettings(max_queue=1))
    with proxy.http() as http:
        http.post("/upstream/q/health")  # wake it
    occupier = send_in_background(proxy, chat_body("q", "occupier"))
    wait_until(lambda: proxy.backend("q").stats()["in_flight"] == 1, what="slot taken")
    waiter = send_in_background(proxy, chat_body("q", "waiter"))
    wait_until(lambda: queued(proxy, "q") == 1, what="one queued")
    with proxy.http() as http:
        reply = http.post("/v1/chat/completions", json=chat_body("q", "turned away"))
    assert reply.status_code == 429
    assert int(reply.headers["retry-after"]) >= 1
    assert reply.json()["error"]["code"] == "queue_full"
    with pytest.raises(openai.RateLimitError):
        proxy.client().chat.completions.create(
            model="q", messages=[{"role": "user", "content": "x"}]
        )
    occupier.join(30)
    waiter.join(30)
    assert waiter.results[0].status_code == 200  # type: ignore[attr-defined]
    assert_balanced(proxy.gateway)


def test_waiting_past_the_wait_bound_is_503_with_retry_after(make_proxy: MakeProxy) -> None:
    model = FakeModel("q", backend_args=("--request-delay", "1.5"), max_concurrency=1)
    proxy = make_proxy([model], ProxySettings(queue_timeout=0.3))
    with proxy.http() as http:
        http.get("/upstream/q/health")
    occupier = send_in_background(proxy, chat_body("q", "occupier"))
    wait_until(lambda: proxy.backend("q").stats()["in_flight"] == 1, what="slot taken")
    with proxy.http() as http:
        reply = http.post("/v1/chat/completions", json=chat_body("q", "too late"))
    assert reply.status_code == 503
    assert int(reply.headers["retry-after"]) >= 1
    assert reply.json()["error"]["code"] == "queue_timeout"
    occupier.join(30)
    assert queued(proxy, "q") == 0
    assert_balanced(proxy.gateway)


def test_invalid_priority_is_400(shared: Proxy) -> None:
    with shared.http() as http:
        by_header = http.post(
            "/v1/chat/completions", json=chat_body("alpha"), headers={"X-Priority": "asap"}
        )
        by_body = http.post("/v1/chat/completions", json=chat_body("alpha", x_priority=[1]))
    for reply in (by_header, by_body):
        assert reply.status_code == 400
        assert reply.json()["error"]["code"] == "invalid_priority"
        assert "urgent, high, normal, low, batch" in reply.json()["error"]["message"]
