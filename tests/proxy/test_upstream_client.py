"""The proxy's HTTP/1.1 client to backends, over real sockets: the fake backend for ordinary
traffic, tiny asyncio servers for the misbehaviours it cannot produce on demand."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from proxy.upstream import UpstreamError, UpstreamPool
from tests.helpers.backend import FakeBackend, start_fake_backend

CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()
JSON = [(b"content-type", b"application/json")]


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeBackend]:
    with start_fake_backend("--model-name", "m", "--tokens", "4") as b:
        yield b


async def test_keep_alive_reuses_one_connection(backend: FakeBackend) -> None:
    pool = UpstreamPool(backend.url)
    for _ in range(5):
        reply = await pool.request("POST", "/v1/chat/completions", JSON, CHAT)
        body = json.loads(await reply.aread())
        reply.close()
        assert reply.status == 200 and body["object"] == "chat.completion"
    assert pool.connections == 1
    pool.close()


async def test_streams_arrive_chunk_by_chunk(make_slow: Callable[..., FakeBackend]) -> None:
    slow = make_slow()
    pool = UpstreamPool(slow.url)
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    )
    reply = await pool.request("POST", "/v1/chat/completions", JSON, body.encode())
    assert reply.content_type.startswith(b"text/event-stream")
    chunks = []
    async for chunk in reply.aiter_raw():
        chunks.append(chunk)
        if len(chunks) == 2:  # mid-stream: the backend is still generating
            assert slow.stats()["in_flight"] == 1
    reply.close()
    assert chunks[-1].endswith(b"data: [DONE]\n\n") and len(chunks) >= 6
    assert pool.idle_connections == 1  # complete: kept for reuse
    pool.close()


@pytest.fixture
def make_slow() -> Iterator[Callable[..., FakeBackend]]:
    started: list[FakeBackend] = []

    def make(*args: str) -> FakeBackend:
        b = start_fake_backend("--tokens", "6", "--token-delay", "0.1", *args)
        started.append(b)
        return b

    yield make
    for b in started:
        b.stop()


async def test_closing_an_unfinished_reply_closes_the_connection(
    make_slow: Callable[..., FakeBackend],
) -> None:
    slow = make_slow("--tokens", "100")
    pool = UpstreamPool(slow.url)
    body = json.dumps(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    )
    reply = await pool.request("POST", "/v1/chat/completions", JSON, body.encode())
    async for _ in reply.aiter_raw():
        break
    reply.close()
    assert pool.idle_connections == 0
    for _ in range(100):
        if slow.stats()["disconnects"] == 1:
            break
        await asyncio.sleep(0.05)
    assert slow.stats()["disconnects"] == 1
    pool.close()


async def test_streamed_request_bodies(backend: FakeBackend) -> None:
    pool = UpstreamPool(backend.url)

    async def parts() -> AsyncIterator[bytes]:
        for i in range(0, len(CHAT), 7):
            yield CHAT[i : i + 7]

    for length in (len(CHAT), None):  # Content-Length, then chunked
        reply = await pool.request("POST", "/v1/chat/completions", JSON, parts(), length)
        assert reply.status == 200, await reply.aread()
        await reply.aread()
        reply.close()
    last = backend.last_request()
    assert last is not None and last["body"]["messages"][0]["content"] == "hi"
    assert last["headers"]["transfer-encoding"] == "chunked"
    assert pool.connections == 1
    pool.close()


async def test_head_and_get(backend: FakeBackend) -> None:
    pool = UpstreamPool(backend.url)
    head = await pool.request("HEAD", "/health", [], b"")
    assert head.status in (200, 501)  # the fake does not implement HEAD; either way no body
    assert await head.aread() == b""
    head.close()
    get = await pool.request("GET", "/debug/stats", [], b"")
    assert json.loads(await get.aread())["model"] == "m"
    get.close()
    pool.close()


async def test_connection_refused() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    pool = UpstreamPool(f"http://127.0.0.1:{port}")
    with pytest.raises(UpstreamError) as caught:
        await pool.request("GET", "/", [], b"")
    assert caught.value.kind == "connect" and caught.value.backend_failed


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


OK = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


async def test_a_kept_alive_connection_closed_by_the_backend_is_not_reused() -> None:
    connections = 0

    async def once_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        nonlocal connections
        connections += 1
        await read_request(reader)
        writer.write(OK)  # says nothing about closing, then closes: an idle timeout
        await writer.drain()
        writer.close()

    server, url = await serve(once_per_connection)
    pool = UpstreamPool(url)
    for _ in range(3):
        reply = await pool.request("POST", "/", [], b"x")
        assert await reply.aread() == b"{}"
        reply.close()
        await asyncio.sleep(0.05)  # the close reaches us while the connection is idle
    assert connections == 3
    server.close()
    pool.close()


async def test_a_stale_connection_is_retried_once_on_a_fresh_one() -> None:
    served = 0

    async def close_after_reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(OK)
        await writer.drain()
        # Wait for the next request, then drop it unanswered (a keep-alive race).
        await reader.read(1)
        writer.transport.abort()

    server, url = await serve(close_after_reply)
    pool = UpstreamPool(url)
    for _ in range(2):
        reply = await pool.request("POST", "/", [], b"x")
        assert await reply.aread() == b"{}"
        reply.close()
    assert served == 2
    server.close()
    pool.close()


async def test_death_mid_body_and_timeouts() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    server, url = await serve(half)
    pool = UpstreamPool(url)
    reply = await pool.request("GET", "/", [], b"")
    with pytest.raises(UpstreamError) as caught:
        await reply.aread()
    assert caught.value.kind == "closed"
    reply.close()
    server.close()

    async def stalls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
        await writer.drain()
        await asyncio.sleep(5)

    server, url = await serve(silent)
    pool = UpstreamPool(url)
    with pytest.raises(UpstreamError) as caught:  # no head within the request's head timeout
        await pool.request("GET", "/", [], b"", head_timeout=0.1, read_timeout=10)
    assert caught.value.kind == "head_timeout" and not caught.value.backend_failed
    assert caught.value.seconds == 0.1
    server.close()
    pool.close()

    server, url = await serve(stalls)
    pool = UpstreamPool(url)
    reply = await pool.request("GET", "/", [], b"", head_timeout=10, read_timeout=0.1)
    with pytest.raises(UpstreamError) as caught:  # the body stops: silent past the read timeout
        await reply.aread()
    assert caught.value.kind == "read_timeout" and caught.value.seconds == 0.1
    reply.close()
    server.close()
    pool.close()


async def test_garbage_is_a_protocol_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SPDY/9 what\r\n\r\n")
        await writer.drain()

    server, url = await serve(garbage)
    pool = UpstreamPool(url)
    with pytest.raises(UpstreamError) as caught:
        await pool.request("GET", "/", [], b"")
    assert caught.value.kind == "protocol"
    server.close()
    pool.close()


async def test_large_replies_are_relayed_whole_with_back_pressure() -> None:
    size = 8 * 1024 * 1024

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size)
        for _ in range(size // 65536):
            writer.write(b"y" * 65536)
            await writer.drain()

    server, url = await serve(big)
    pool = UpstreamPool(url)
    reply = await pool.request("GET", "/", [], b"")
    received = 0
    async for chunk in reply.aiter_raw():
        received += len(chunk)
        await asyncio.sleep(0)  # a slow reader
    assert received == size
    reply.close()
    server.close()
    pool.close()


async def test_an_early_answer_stops_the_upload() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Too Large\r\ncontent-length: 0\r\n\r\n")
        await writer.drain()
        while await reader.read(65536):  # until the client hangs up
            pass

    server, url = await serve(refuse)
    pool = UpstreamPool(url)
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        while sent < 50_000_000:
            sent += 65536
            yield b"z" * 65536
            await asyncio.sleep(0.001)

    reply = await pool.request("POST", "/", [], endless(), None)
    assert reply.status == 413
    assert sent < 50_000_000
    reply.close()
    assert pool.idle_connections == 0  # the request was cut short: never reused
    server.close()
    pool.close()
