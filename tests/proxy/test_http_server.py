"""The proxy's own HTTP/1.1 connections (proxy/server.py), byte for byte over raw sockets:
keep-alive, pipelining, ``Expect: 100-continue``, HTTP/1.0, bad requests, bodies answered
before they were read, ``X-Forwarded-For`` from a trusted proxy, and the idle timeout."""

from __future__ import annotations

import json
import socket
import time

import pytest

from proxy import create_app
from proxy.auth import hash_key
from proxy.gateway import ApiKey
from tests.proxy.conftest import MakeProxy, Proxy
from tests.proxy.fakegateway import FakeGateway, FakeModel
from tests.proxy.server import ProxyServer
from tests.proxy.util import assert_balanced, wait_until

BODY = json.dumps({"model": "alpha", "messages": [{"role": "user", "content": "hi"}]}).encode()


def connect(proxy: Proxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.server.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def post(body: bytes = BODY, path: str = "/v1/chat/completions", extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


class Reader:
    """Reads HTTP/1.1 responses (Content-Length or chunked) from a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            if not self._fill():
                raise EOFError(f"closed before {marker!r}: {self.buffer[:200]!r}")
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise EOFError("closed mid-body")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def response(self) -> tuple[int, dict[str, str], bytes]:
        head = self._until(b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        if status == 100:
            return status, headers, b""
        if "content-length" in headers:
            return status, headers, self._exactly(int(headers["content-length"]))
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._until(b"\r\n").split(b";")[0], 16):
                body += self._exactly(size)
                self._exactly(2)
            self._until(b"\r\n")
            return status, headers, body
        while self._fill():  # HTTP/1.0: the body ends with the connection
            pass
        body, self.buffer = self.buffer, b""
        return status, headers, body

    def closed(self) -> bool:
        """True once the server has closed the connection (and nothing else came)."""
        try:
            return not self.buffer and not self._fill()
        except ConnectionResetError:
            return True


def test_keep_alive_and_pipelined_requests_are_answered_in_order(shared: Proxy) -> None:
    with connect(shared) as sock:
        reader = Reader(sock)
        for _ in range(3):  # one after the other on one connection
            sock.sendall(post())
            status, _, body = reader.response()
            assert status == 200 and json.loads(body)["model"] == "alpha"
        models = post(b"", "/v1/models").replace(b"POST", b"GET")
        sock.sendall(post() + models + post(BODY.replace(b"alpha", b"beta")))  # pipelined
        answers = [reader.response() for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    assert json.loads(answers[0][2])["model"] == "alpha"
    assert json.loads(answers[1][2])["object"] == "list"
    assert json.loads(answers[2][2])["model"] == "beta"
    assert_balanced(shared.gateway)


def test_expect_100_continue(shared: Proxy) -> None:
    with connect(shared) as sock:
        reader = Reader(sock)
        sock.sendall(post(extra="Expect: 100-continue\r\n")[: -len(BODY)])  # the head only
        assert reader.response()[0] == 100  # the go-ahead, before any body was sent
        sock.sendall(BODY)
        status, _, body = reader.response()
        assert status == 200 and json.loads(body)["model"] == "alpha"


def test_an_answer_before_a_body_the_client_holds_back_closes_the_connection(
    shared: Proxy,
) -> None:
    """A client that waits for ``100 Continue`` and gets a final answer instead will not send
    the body: the connection cannot be reused, and the answer says so."""
    with connect(shared) as sock:
        reader = Reader(sock)
        huge = 64 * 1024 * 1024  # over the body limit: refused from Content-Length alone
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % huge
        )
        status, headers, _ = reader.response()
        assert status == 413 and headers["connection"] == "close"
        assert reader.closed()


def test_http_1_0_gets_a_closed_delimited_answer(shared: Proxy) -> None:
    with connect(shared) as sock:
        reader = Reader(sock)
        sock.sendall(post().replace(b"HTTP/1.1", b"HTTP/1.0"))
        status, headers, body = reader.response()
        assert status == 200 and json.loads(body)["model"] == "alpha"
        assert headers["connection"] == "close"


def test_http_1_0_stream_without_chunked_encoding(shared: Proxy) -> None:
    streamed = json.dumps(
        {"model": "beta", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    with connect(shared) as sock:
        reader = Reader(sock)
        sock.sendall(post(streamed).replace(b"HTTP/1.1", b"HTTP/1.0"))
        status, headers, body = reader.response()
    assert status == 200 and "transfer-encoding" not in headers
    assert body.rstrip().endswith(b"data: [DONE]")


def test_garbage_is_a_400_and_the_connection_closes(shared: Proxy) -> None:
    with connect(shared) as sock:
        reader = Reader(sock)
        sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        status, _, body = reader.response()
        assert status == 400 and b"Invalid HTTP request" in body
        assert reader.closed()


def test_an_answer_before_the_body_is_read_keeps_the_connection(make_proxy: MakeProxy) -> None:
    """A 401 is answered from the headers alone, while the rest of a large body is still on its
    way: the rest is read and dropped, and the connection serves the next request."""
    proxy = make_proxy([FakeModel("alpha")], keys=[ApiKey("ci", hash_key("good"))])
    body = json.dumps({"model": "alpha", "pad": "x" * 500_000}).encode()
    with connect(proxy) as sock:
        reader = Reader(sock)
        sock.sendall(post(body, extra="Authorization: Bearer bad\r\n"))
        assert reader.response()[0] == 401
        sock.sendall(post(extra="Authorization: Bearer good\r\n"))
        status, _, answer = reader.response()
        assert status == 200 and json.loads(answer)["model"] == "alpha"


def test_a_body_over_the_limit_is_413_and_the_rest_is_not_read(make_proxy: MakeProxy) -> None:
    from proxy import ProxySettings

    proxy = make_proxy([FakeModel("alpha")], ProxySettings(max_body_bytes=1000))
    with connect(proxy) as sock:
        reader = Reader(sock)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n{%s\r\n" % (2000, b"x" * 1999)
        )
        assert reader.response()[0] == 413
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        with pytest.raises(OSError):  # the proxy hangs up rather than read megabytes for nothing
            for _ in range(1000):
                sock.sendall(chunk)


def test_x_forwarded_for_from_a_trusted_proxy_names_the_client(shared: Proxy) -> None:
    with connect(shared) as sock:
        reader = Reader(sock)
        sock.sendall(post(extra="X-Forwarded-For: 203.0.113.7, 127.0.0.1\r\n"))
        assert reader.response()[0] == 200
    wait_until(lambda: shared.gateway.records, what="the request record")
    assert shared.gateway.records[-1].client == "203.0.113.7"


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout() -> None:
    gateway = FakeGateway([FakeModel("alpha")])
    server = ProxyServer(lambda lifespan: create_app(gateway, lifespan=lifespan), keep_alive=1)
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            reader = Reader(sock)
            sock.sendall(post())
            assert reader.response()[0] == 200
            started = time.monotonic()
            assert reader.closed()  # by the proxy, with nothing sent
            assert 0.9 <= time.monotonic() - started < 8
    finally:
        server.stop()
        gateway.close()
