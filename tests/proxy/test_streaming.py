"""Streams pass through as they are made; disconnects and dying backends are handled."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.proxy.conftest import MakeProxy
from tests.proxy.fakegateway import FakeModel
from tests.proxy.util import assert_balanced, chat_body, data_events, sse_lines, wait_until

SLOW = FakeModel("slow", backend_args=("--tokens", "6", "--token-delay", "0.3"))


def test_first_chunk_arrives_before_the_backend_has_finished(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([SLOW])
    stream = proxy.client().chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = iter(stream)
    first = next(chunks)
    assert first.choices[0].delta.role == "assistant"
    # The backend is still generating (5 more tokens, 0.3 s apart) while we hold a chunk.
    assert proxy.backend("slow").stats()["in_flight"] == 1
    rest = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(rest) == 6
    # The backend lowers its counter just after writing the last chunk: wait for it.
    backend = proxy.backend("slow")
    wait_until(lambda: backend.stats()["in_flight"] == 0, what="the backend to finish")
    assert_balanced(proxy.gateway)


def test_stream_usage_is_counted_without_touching_the_chunks(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([FakeModel("m", backend_args=("--tokens", "5"))])
    body = chat_body("m", "one two three", stream=True, stream_options={"include_usage": True})
    with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as reply:
        lines = list(sse_lines(reply))
    events = data_events(lines)
    assert events[-1] == "[DONE]"
    assert events[-2]["usage"]["completion_tokens"] == 5
    record = proxy.gateway.records[-1]
    assert (record.prompt_tokens, record.completion_tokens) == (3, 5)
    assert record.ttft is not None and record.status == 200


def test_client_disconnect_cancels_the_upstream_request(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(
        [FakeModel("long", backend_args=("--tokens", "200", "--token-delay", "0.05"))]
    )
    body = chat_body("long", stream=True)
    with proxy.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as reply:
        for line in sse_lines(reply):
            if line.startswith("data: ") and "content" in line:
                break  # leave mid-stream: closing the response closes the connection
    backend = proxy.backend("long")
    wait_until(lambda: backend.stats()["disconnects"] == 1, what="the backend to see the close")
    assert backend.stats()["in_flight"] == 0
    assert_balanced(proxy.gateway)
    wait_until(lambda: proxy.gateway.records, what="the request record")
    assert proxy.gateway.records[-1].status == 499
    assert proxy.gateway.failures == []


def test_disconnect_while_queued_leaves_the_queue(make_proxy: MakeProxy) -> None:
    model = FakeModel("one", backend_args=("--request-delay", "1.0"), max_concurrency=1)
    proxy = make_proxy([model])
    with proxy.http() as warm:
        assert warm.post("/v1/chat/completions", json=chat_body("one")).status_code == 200
    done = threading.Event()

    def occupy() -> None:
        with proxy.http() as http:
            http.post("/v1/chat/completions", json=chat_body("one", "occupier"))
        done.set()

    threading.Thread(target=occupy, daemon=True).start()
    wait_until(lambda: proxy.backend("one").stats()["in_flight"] == 1, what="the slot taken")
    with proxy.http(timeout=0.3) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post("/v1/chat/completions", json=chat_body("one", "gives up"))
    done.wait(10)
    assert_balanced(proxy.gateway)
    prompts = [
        r["body"]["messages"][0]["content"]
        for r in proxy.backend("one").get_json("/debug/requests")
    ]
    assert "gives up" not in prompts  # it left the queue and was never forwarded


def test_backend_killed_mid_stream_ends_the_stream_with_an_error(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([SLOW])
    stream = proxy.client().chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = iter(stream)
    next(chunks)
    os.kill(proxy.backend("slow").pid, signal.SIGKILL)
    with pytest.raises(openai.APIError) as caught:
        list(chunks)
    assert "backend of `slow` failed" in caught.value.message
    assert [model for model, _ in proxy.gateway.failures] == ["slow"]
    assert_balanced(proxy.gateway)
    assert proxy.gateway.records[-1].status == 502
    # The next request wakes it again (the gateway marked it failed and restarts it).
    reply = proxy.client().chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "again"}]
    )
    assert "again" in (reply.choices[0].message.content or "")
    assert proxy.gateway.starts["slow"] == 2


def test_error_event_is_openai_shaped(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([SLOW])
    with (
        proxy.http() as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body("slow", stream=True)) as reply,
    ):
        lines = sse_lines(reply)
        next(line for line in lines if line.startswith("data: "))
        os.kill(proxy.backend("slow").pid, signal.SIGKILL)
        rest = list(lines)
    error = data_events(rest)[-1]["error"]
    assert error["type"] == "server_error" and error["code"] == "backend_error"


def test_dead_backend_before_any_byte_is_502(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([FakeModel("m")])
    client = proxy.client()
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    backend = proxy.backend("m")
    os.kill(backend.pid, signal.SIGKILL)
    backend.process.wait(5)
    # The fake gateway still reports it Ready at the old endpoint: the connection is refused.
    proxy.gateway.backends["m"] = backend
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 502
    assert caught.value.code == "backend_error"
    assert [model for model, _ in proxy.gateway.failures] == ["m"]
    assert_balanced(proxy.gateway)


@pytest.fixture
def done_before_the_end() -> Iterator[str]:
    """A backend that streams two events (the last with usage) and ``data: [DONE]``, then takes
    half a second to end its chunked reply."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    events = [
        b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n',
        b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n',
        b"data: [DONE]\n\n",
    ]

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                    b"transfer-encoding: chunked\r\n\r\n"
                    + b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events)
                )
                time.sleep(0.5)
                conn.sendall(b"0\r\n\r\n")
                time.sleep(0.5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


@pytest.mark.parametrize("native", [True, False], ids=["native", "asgi"])
def test_a_client_that_leaves_at_done_got_a_complete_answer(
    make_proxy: MakeProxy, done_before_the_end: str, native: bool
) -> None:
    """Clients stop reading at ``data: [DONE]`` and may hang up before the backend has ended its
    reply: that is a complete request (200, its usage counted), not a client gone (499)."""
    proxy = make_proxy([FakeModel("m", endpoint=done_before_the_end)], native=native)
    with (
        proxy.http() as http,
        http.stream("POST", "/v1/chat/completions", json=chat_body("m", stream=True)) as reply,
    ):
        assert data_events(list(sse_lines_until_done(reply)))[-1] == "[DONE]"
    # the connection is closed here, before the backend's last bytes
    wait_until(lambda: proxy.gateway.records, what="the request record")
    record = proxy.gateway.records[-1]
    assert (record.status, record.prompt_tokens, record.completion_tokens) == (200, 3, 1)
    assert_balanced(proxy.gateway)


def sse_lines_until_done(reply: httpx.Response) -> Iterator[str]:
    for line in sse_lines(reply):
        yield line
        if line == "data: [DONE]":
            return
