"""Probes, the admin API and /metrics."""

from __future__ import annotations

import json
import threading

from tests.proxy.conftest import MakeProxy
from tests.proxy.fakegateway import FakeModel
from tests.proxy.util import assert_balanced, chat_body, wait_until


def test_probes(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([FakeModel("m")])
    with proxy.http() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json() == {"ready": True, "reason": "first pass done"}
        proxy.gateway.ready = (False, "runtime docker unreachable")
        not_ready = http.get("/readyz")
    assert not_ready.status_code == 503
    assert not_ready.json()["reason"] == "runtime docker unreachable"


def test_status_merges_queue_numbers(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([FakeModel("m", backend_args=("--token-delay", "0.1"), max_concurrency=1)])
    with proxy.http() as http:
        http.get("/upstream/m/health")
        status = http.get("/api/status").json()
        assert status["models"] == [
            {
                "name": "m",
                "phase": "Ready",
                "endpoint": proxy.backend("m").url,
                "queued": 0,
                "inFlight": 0,
            }
        ]
        assert status["gpus"] == []
        done = []

        def stream() -> None:
            body = chat_body("m", stream=True, max_tokens=10)
            with proxy.http() as other:
                done.append(other.post("/v1/chat/completions", json=body).status_code)

        threads = [threading.Thread(target=stream) for _ in range(2)]
        for thread in threads:
            thread.start()

        def numbers() -> tuple[int, int]:
            entry = http.get("/api/status").json()["models"][0]
            return entry["inFlight"], entry["queued"]

        wait_until(lambda: numbers() == (1, 1), what="one in flight, one queued")
        metrics = http.get("/metrics").text
        assert 'modelplane_queue_depth{model="m"} 1.0' in metrics
        assert 'modelplane_in_flight{model="m"} 1.0' in metrics
        for thread in threads:
            thread.join(30)
    assert done == [200, 200]
    assert_balanced(proxy.gateway)


def test_events_and_follow(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([FakeModel("m"), FakeModel("n")])
    with proxy.http() as http:
        http.get("/upstream/m/health")
        events = http.get("/api/events").json()
        assert [(e["model"], e["kind"]) for e in events] == [("m", "starting"), ("m", "ready")]
        assert http.get("/api/events?model=n").json() == []
        assert len(http.get("/api/events?limit=1").json()) == 1
        assert http.get("/api/events?limit=x").status_code == 400
        with http.stream("GET", "/api/events?follow=1&model=n&limit=5") as reply:
            assert reply.headers["content-type"].startswith("text/event-stream")
            wait_until(lambda: proxy.gateway.followers == 1, what="a follower")
            proxy.server.call(proxy.gateway.emit, {"model": "m", "kind": "other model"})
            proxy.server.call(proxy.gateway.emit, {"model": "n", "kind": "hello"})
            line = next(line for line in reply.iter_lines() if line.startswith("data: "))
        assert json.loads(line.removeprefix("data: "))["kind"] == "hello"
    wait_until(lambda: proxy.gateway.followers == 0, what="the follower to leave")


def test_a_follow_stream_the_server_ends_is_over_for_client_and_handler(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy([FakeModel("m")])
    with proxy.http() as http:
        with http.stream("GET", "/api/events?follow=1") as reply:
            wait_until(lambda: proxy.gateway.followers == 1, what="a follower")
            proxy.server.call(proxy.gateway.end_followers)
            assert list(reply.iter_lines()) == []  # complete: the client saw the end
        assert http.get("/healthz").status_code == 200  # and the connection is reusable
    # The app's handler returned too (uvicorn's graceful stop waits for every handler).
    wait_until(lambda: proxy.server.handlers_running() == 0, what="the handler to return")


def test_reconcile_load_unload(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([FakeModel("m"), FakeModel("pinned", pinned=True)])
    with proxy.http() as http:
        assert http.post("/api/reconcile").json() == {"pass": 1, "actions": []}
        loaded = http.post("/api/models/m/load")
        assert loaded.json() == {"model": "m", "action": "load", "phase": "Ready"}
        assert proxy.gateway.starts["m"] == 1
        unloaded = http.post("/api/models/m/unload")
        assert unloaded.json() == {"model": "m", "action": "unload", "phase": "Asleep"}
        refused = http.post("/api/models/pinned/unload")
        assert refused.status_code == 409
        assert refused.json()["error"]["message"].startswith("model `pinned` is pinned")
        missing = http.post("/api/models/nope/load")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_metrics_after_requests(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([FakeModel("m", backend_args=("--tokens", "5"))])
    client = proxy.client()
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a b c"}])
    stream = client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "a b"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    assert len(list(stream)) > 5
    with proxy.http() as http:
        http.post("/v1/chat/completions", json=chat_body("nope"))
        http.get("/upstream/m/health")
        text = http.get("/metrics").text
    expected = [
        'modelplane_requests_total{model="m",status="200"} 2.0',
        'modelplane_requests_total{model="",status="404"} 1.0',
        'modelplane_request_duration_seconds_count{model="m"} 2.0',
        'modelplane_time_to_first_token_seconds_count{model="m"} 1.0',
        'modelplane_tokens_total{kind="prompt",model="m"} 5.0',
        'modelplane_tokens_total{kind="completion",model="m"} 10.0',
        'modelplane_upstream_requests_total{model="m",status="200"} 1.0',
        'modelplane_cold_starts_total{model="m"} 1.0',
        'modelplane_cold_start_duration_seconds_count{model="m"} 1.0',
        'modelplane_model_phase{model="m",phase="Ready"} 1.0',
        'modelplane_model_phase{model="m",phase="Asleep"} 0.0',
        'modelplane_queue_depth{model="m"} 0.0',
    ]
    missing = [line for line in expected if line not in text]
    assert missing == []
    records = proxy.gateway.records
    assert [(r.model, r.path, r.status) for r in records] == [
        ("m", "/v1/chat/completions", 200),
        ("m", "/v1/chat/completions", 200),
        ("nope", "/v1/chat/completions", 404),
        ("m", "/upstream/m/health", 200),
    ]
    assert records[0].client == "127.0.0.1"
    assert (records[0].prompt_tokens, records[0].completion_tokens) == (3, 5)
    assert records[0].ttft is None and records[1].ttft is not None
    assert all(r.latency > 0 for r in records)
