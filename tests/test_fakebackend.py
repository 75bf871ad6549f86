"""The fake backend, as a real process over real sockets: what other tests rely on it doing."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.helpers.backend import FakeBackend, fake_backend_command, free_port, start_fake_backend


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeBackend]:
    """One shared, well-behaved backend for the read-mostly API tests."""
    with start_fake_backend(
        "--model-name",
        "foo",
        "--echo-env",
        "FAKE_MARK",
        env={"CUDA_VISIBLE_DEVICES": "1,0", "FAKE_MARK": "xyz"},
    ) as b:
        yield b


def sse_events(response: httpx.Response) -> Iterator[tuple[float, str]]:
    """(arrival time, payload) of each `data:` line of a streamed response."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield time.monotonic(), line.removeprefix("data: ")


def chat(backend: FakeBackend, content: str, **extra: object) -> httpx.Response:
    body = {"model": "foo", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(f"{backend.base_url}/chat/completions", json=body, timeout=30)


def test_models_lists_the_model_name(backend: FakeBackend) -> None:
    listing = httpx.get(f"{backend.base_url}/models").json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["foo"]


def test_chat_reply_names_the_backend_and_echoes_the_prompt(backend: FakeBackend) -> None:
    reply = chat(backend, "hello there").json()
    text = reply["choices"][0]["message"]["content"]
    assert reply["object"] == "chat.completion"
    assert text.split() == [
        f"foo@{backend.port}",
        f"pid={backend.pid}",
        "echo:",
        "hello",
        "there",
        f"foo@{backend.port}",
        f"pid={backend.pid}",
        "echo:",
    ]
    assert reply["usage"] == {"prompt_tokens": 2, "completion_tokens": 8, "total_tokens": 10}
    assert reply["choices"][0]["finish_reason"] == "stop"

    short = chat(backend, "hi", max_tokens=3).json()
    assert short["usage"]["completion_tokens"] == 3
    assert short["choices"][0]["finish_reason"] == "length"


def test_chat_stream_concatenates_to_the_plain_reply(backend: FakeBackend) -> None:
    plain = chat(backend, "stream me").json()["choices"][0]["message"]["content"]
    body = {
        "model": "foo",
        "messages": [{"role": "user", "content": "stream me"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{backend.base_url}/chat/completions", json=body) as response:
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["transfer-encoding"] == "chunked"
        payloads = [p for _, p in sse_events(response)]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    deltas = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    assert "".join(deltas) == plain
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 8


def test_bad_body_is_a_400_in_openai_shape(backend: FakeBackend) -> None:
    response = httpx.post(f"{backend.base_url}/chat/completions", content=b"not json")
    assert response.status_code == 400
    assert "JSON object" in response.json()["error"]["message"]


def test_completions_plain_and_streamed(backend: FakeBackend) -> None:
    url = f"{backend.base_url}/completions"
    plain = httpx.post(url, json={"model": "foo", "prompt": "once upon", "max_tokens": 5}).json()
    assert plain["object"] == "text_completion"
    text = plain["choices"][0]["text"]
    assert text.split()[3:] == ["once", "upon"]
    with httpx.stream(
        "POST", url, json={"prompt": "once upon", "max_tokens": 5, "stream": True}
    ) as r:
        payloads = [p for _, p in sse_events(r)]
    assert payloads[-1] == "[DONE]"
    assert "".join(json.loads(p)["choices"][0]["text"] for p in payloads[:-1]) == text


def test_embeddings_are_deterministic_unit_vectors(backend: FakeBackend) -> None:
    url = f"{backend.base_url}/embeddings"
    first = httpx.post(url, json={"model": "foo", "input": ["alpha", "beta"]}).json()
    again = httpx.post(url, json={"model": "foo", "input": "alpha"}).json()
    alpha, beta = (d["embedding"] for d in first["data"])
    assert len(alpha) == 16
    assert again["data"][0]["embedding"] == alpha
    assert alpha != beta
    assert math.isclose(sum(v * v for v in alpha), 1.0, rel_tol=1e-9)


def test_debug_views_show_request_and_environment(backend: FakeBackend) -> None:
    chat(backend, "check headers", x_priority="high", user="u1")
    httpx.post(
        f"{backend.base_url}/chat/completions",
        headers={"X-Trace": "t-1"},
        json={"model": "foo", "messages": [{"role": "user", "content": "last"}]},
    )
    last = backend.last_request()
    assert last["path"] == "/v1/chat/completions"
    assert last["headers"]["x-trace"] == "t-1"
    assert last["body"]["messages"][0]["content"] == "last"
    assert "x_priority" not in last["body"]
    history = backend.get_json("/debug/requests")
    assert any((r["body"] or {}).get("x_priority") == "high" for r in history)
    stats = backend.stats()
    assert stats["pid"] == backend.pid
    assert stats["port"] == backend.port
    assert stats["env"] == {"CUDA_VISIBLE_DEVICES": "1,0", "FAKE_MARK": "xyz"}
    assert stats["requests"] >= 2


def test_openai_client_chat_stream_and_embeddings(backend: FakeBackend) -> None:
    client = openai.OpenAI(base_url=backend.base_url, api_key="unused", max_retries=0)
    reply = client.chat.completions.create(
        model="foo", messages=[{"role": "user", "content": "via openai"}]
    )
    assert "via openai" in reply.choices[0].message.content
    assert reply.usage.completion_tokens == 8
    stream = client.chat.completions.create(
        model="foo",
        messages=[{"role": "user", "content": "via openai"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply.choices[0].message.content
    assert chunks[-1].usage.total_tokens == reply.usage.total_tokens
    # The client asks for base64 embeddings by default; they decode to the same floats.
    vector = client.embeddings.create(model="foo", input="alpha").data[0].embedding
    plain = httpx.post(f"{backend.base_url}/embeddings", json={"input": "alpha"}).json()
    assert vector == pytest.approx(plain["data"][0]["embedding"], abs=1e-6)


def test_concurrent_requests_are_served_in_parallel() -> None:
    with start_fake_backend("--request-delay", "0.5") as b:
        threads = [threading.Thread(target=chat, args=(b, "x")) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = b.stats()
    assert stats["completed"] == 4
    assert stats["max_in_flight"] >= 2


def test_stream_arrives_incrementally_with_token_delay() -> None:
    with start_fake_backend("--tokens", "6", "--token-delay", "0.3") as b:
        body = {"messages": [{"role": "user", "content": "slow"}], "stream": True}
        with httpx.stream("POST", f"{b.base_url}/chat/completions", json=body, timeout=30) as r:
            times = [t for t, p in sse_events(r) if p != "[DONE]"]
        client = openai.OpenAI(base_url=b.base_url, api_key="unused", max_retries=0)
        stream = client.chat.completions.create(
            model="foo", messages=[{"role": "user", "content": "slow"}], stream=True
        )
        openai_times = [time.monotonic() for chunk in stream if chunk.choices[0].delta.content]
    # 5 sleeps of 0.3 s lie between the first and the last token; buffering would collapse them.
    assert times[-1] - times[0] > 0.5
    assert len(openai_times) == 6
    assert openai_times[-1] - openai_times[0] > 0.5


def test_health_is_503_during_startup_delay_then_200() -> None:
    started = time.monotonic()
    with start_fake_backend("--startup-delay", "2", wait="listening") as b:
        assert b.health_status() == 503
        assert chat(b, "too early").status_code == 503
        b.wait_healthy()
        assert time.monotonic() - started >= 2
        assert "model loaded" in b.log_text()


def test_listen_delay_binds_late() -> None:
    port = free_port()
    with start_fake_backend("--listen-delay", "2", port=port, wait="started") as b:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        b.wait_healthy()


def test_fail_health_and_toggle() -> None:
    with start_fake_backend("--fail-health", wait="listening") as b:
        assert b.health_status() == 500
        httpx.post(f"{b.url}/debug/health", json={"fail": False})
        assert b.health_status() == 200
        httpx.post(f"{b.url}/debug/health", json={"fail": True})
        assert b.health_status() == 500


def test_crash_after_n_requests_exits_3() -> None:
    with start_fake_backend("--crash-after", "2") as b:
        assert chat(b, "one").status_code == 200
        assert chat(b, "two").status_code == 200
        assert b.wait_exit() == 3
        with pytest.raises(httpx.TransportError):
            chat(b, "three")
        assert "crashing after 2 requests" in b.log_text()


def test_crash_mid_stream_cuts_the_stream() -> None:
    with start_fake_backend("--crash-mid-stream", "--crash-after", "2") as b:
        assert chat(b, "fine").status_code == 200
        body = {"messages": [{"role": "user", "content": "doomed"}], "stream": True}
        got: list[str] = []
        url = f"{b.base_url}/chat/completions"
        # The chunked body ends without its terminating chunk: a protocol error for the client.
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream("POST", url, json=body) as r,
        ):
            got.extend(p for _, p in sse_events(r))
        assert 1 <= len(got) < 8 and "[DONE]" not in got
        assert b.wait_exit() == 3


def test_exit_immediately_gives_code_and_log_line() -> None:
    with start_fake_backend("--exit-immediately", "7", wait="started") as b:
        assert b.wait_exit() == 7
        assert "FATAL: failed to load model 'fake-model'" in b.log_text()


def test_bad_option_is_argparse_exit_2() -> None:
    done = subprocess.run(fake_backend_command("--no-such-flag"), capture_output=True, text=True)
    assert done.returncode == 2
    assert "--no-such-flag" in done.stderr


def test_sigterm_finishes_the_stream_then_exits_0() -> None:
    with start_fake_backend("--tokens", "5", "--token-delay", "0.2") as b:
        body = {"messages": [{"role": "user", "content": "finish me"}], "stream": True}
        with httpx.stream("POST", f"{b.base_url}/chat/completions", json=body) as r:
            events = sse_events(r)
            next(events)  # the stream is under way
            os.kill(b.pid, signal.SIGTERM)
            rest = [p for _, p in events]
        assert rest[-1] == "[DONE]"
        assert b.wait_exit() == 0
        assert "received SIGTERM" in b.log_text()


def test_ignore_sigterm_needs_sigkill() -> None:
    with start_fake_backend("--ignore-sigterm") as b:
        assert b.stop(grace=1) == -signal.SIGKILL
        assert "ignoring SIGTERM" in b.log_text()
