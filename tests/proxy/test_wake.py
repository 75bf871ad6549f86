"""Waking asleep models: one wake for many requests, loading comments, failures."""

from __future__ import annotations

import asyncio
import threading

import openai
import pytest

from proxy import ProxySettings
from tests.proxy.conftest import MakeProxy
from tests.proxy.fakegateway import FakeModel
from tests.proxy.util import assert_balanced, chat_body, data_events, sse_lines, wait_until

SLOW_START = FakeModel("sleepy", backend_args=("--startup-delay", "1.0"))


async def test_concurrent_requests_to_an_asleep_model_share_one_wake(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy([SLOW_START])
    client = proxy.async_client()

    async def ask(i: int) -> str:
        reply = await client.chat.completions.create(
            model="sleepy", messages=[{"role": "user", "content": f"request {i}"}]
        )
        return reply.choices[0].message.content or ""

    replies = await asyncio.gather(*(ask(i) for i in range(20)))
    assert all(f"request {i}" in text for i, text in enumerate(replies))
    # The proxy coalesces waiters into one gateway.wake; the gateway started one backend.
    assert proxy.gateway.wake_calls["sleepy"] == 1
    assert proxy.gateway.starts["sleepy"] == 1
    await client.close()
    metrics = proxy.http().get("/metrics").text
    assert 'modelplane_cold_starts_total{model="sleepy"} 1.0' in metrics
    assert 'modelplane_requests_total{model="sleepy",status="200"} 20.0' in metrics
    assert_balanced(proxy.gateway)


def test_a_ready_model_is_not_woken(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([FakeModel("m")])
    client = proxy.client()
    for _ in range(3):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert proxy.gateway.wake_calls["m"] == 1  # only the first, cold, request


def test_a_waiting_stream_gets_loading_comments(make_proxy: MakeProxy) -> None:
    settings = ProxySettings(loading_comment_interval=0.2)
    proxy = make_proxy([SLOW_START], settings)
    with (
        proxy.http() as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body("sleepy", stream=True)) as reply,
    ):
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = list(sse_lines(reply))
    comments = [line for line in lines if line.startswith(":")]
    assert comments[0] == ": loading sleepy (0 s)"
    assert len(comments) >= 3  # ~1 s of loading at 0.2 s intervals
    assert all(c.startswith(": loading sleepy (") and c.endswith(" s)") for c in comments)
    # Comments come first, then the backend's events, unchanged.
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data: "))
    assert all(not line.startswith(":") for line in lines[first_data:])
    assert data_events(lines)[-1] == "[DONE]"
    # The official client ignores the comments.
    stream = proxy.client().chat.completions.create(
        model="sleepy", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_wake_failure_is_503_with_retry_after(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([FakeModel("broken", backend_args=("--exit-immediately", "1"))])
    with proxy.http() as http:
        reply = http.post("/v1/chat/completions", json=chat_body("broken"))
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "2"
    assert reply.json()["error"]["code"] == "model_unavailable"
    assert "failed to start" in reply.json()["error"]["message"]
    with pytest.raises(openai.InternalServerError):
        proxy.client().chat.completions.create(
            model="broken", messages=[{"role": "user", "content": "x"}]
        )
    assert proxy.gateway.begun["broken"] == 0  # never forwarded


def test_wake_failure_during_a_stream_ends_it_with_an_error_event(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([FakeModel("broken", backend_args=("--exit-immediately", "1"))])
    with (
        proxy.http() as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body("broken", stream=True)) as reply,
    ):
        assert reply.status_code == 200  # the stream had started before the wake failed
        lines = list(sse_lines(reply))
    assert lines[0].startswith(": loading broken")
    error = data_events(lines)[-1]["error"]
    assert error["code"] == "model_unavailable" and "failed to start" in error["message"]
    # The request is logged once the response has finished, just after the client's last byte.
    wait_until(lambda: bool(proxy.gateway.records), what="the request record")
    assert proxy.gateway.records[-1].status == 503


def test_upstream_passthrough_wakes_the_model(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([FakeModel("m", aliases=("m-alias",))])
    with proxy.http() as http:
        stats = http.get("/upstream/m/debug/stats").json()
        assert stats["model"] == "m" and stats["port"] == proxy.backend("m").port
        assert http.get("/upstream/m-alias/health").json() == {"status": "ok"}
        missing = http.get("/upstream/m/no/such/path")
        assert missing.status_code == 404  # the backend's own 404, passed through
        assert missing.json()["error"]["message"] == "no route GET /no/such/path"
        posted = http.post("/upstream/m/v1/anything?x=1", content=b"abc")
        assert posted.json()["bytes"] == 3 and posted.json()["path"] == "/v1/anything?x=1"
        unknown = http.get("/upstream/nope/health")
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert proxy.gateway.starts["m"] == 1
    assert_balanced(proxy.gateway)


def test_a_stream_that_woke_its_model_gets_queue_comments_too(make_proxy: MakeProxy) -> None:
    model = FakeModel(
        "one",
        backend_args=("--startup-delay", "0.5", "--token-delay", "0.1"),
        max_concurrency=1,
    )
    proxy = make_proxy([model], ProxySettings(loading_comment_interval=0.2))
    results: dict[int, list[str]] = {}

    def stream(i: int) -> None:
        body = chat_body("one", f"s{i}", stream=True, max_tokens=12)
        with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as r:
            results[i] = list(sse_lines(r))

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    comments = [line for lines in results.values() for line in lines if line.startswith(":")]
    assert any(c.startswith(": loading one (") for c in comments)
    assert any(c.startswith(": queued for one (") for c in comments)  # one waited for the other
    assert all(data_events(lines)[-1] == "[DONE]" for lines in results.values())
    assert proxy.gateway.starts["one"] == 1
    assert_balanced(proxy.gateway)


def test_a_backend_error_after_a_streamed_wake_becomes_an_error_event(
    make_proxy: MakeProxy,
) -> None:
    proxy = make_proxy([SLOW_START])
    body = {"model": "sleepy", "messages": [], "stream": True}  # the backend refuses it
    with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200  # committed while loading
        lines = list(sse_lines(reply))
    assert lines[0].startswith(": loading sleepy")
    events = data_events(lines)
    assert events == [
        {
            "error": {
                "message": "'messages' must be a non-empty list",
                "type": "invalid_request_error",
                "code": 400,
            }
        }
    ]
    assert proxy.gateway.records[-1].status == 400
    assert proxy.gateway.failures == []
    assert_balanced(proxy.gateway)
