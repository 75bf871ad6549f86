"""One request on the proxy's own HTTP/1.1 connection (:mod:`proxy.server`), as a
:class:`~proxy.channel.Downstream`.

Why not ASGI: per request, an ASGI server builds a scope, an event, a task for the app, message
dicts for every receive and send, and writes the head and the body separately; behind it, the
app's router and middleware add as much again. Here the connection's parser fills this object
directly, the answer's head goes out in the same write as its first bytes, and a streamed reply
is copied from the backend's connection straight into the client's (:meth:`relay_body`), with no
task switch per chunk. A client that goes away cancels the handler task at once (no watcher).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import TYPE_CHECKING

from proxy.channel import FINISH_AFTER_DONE, ClientGone, Downstream, ends_stream
from proxy.errors import too_large
from proxy.upstream import Reply
from proxy.usage import Tail

if TYPE_CHECKING:
    from proxy.server import ProxyHttpProtocol

# Request body bytes held before reading from the client pauses (a slow backend upload).
PAUSE_BODY_AT = 256 * 1024
# Body bytes still read (and dropped) after the answer, to keep the connection; past this, close.
DISCARD_AT_MOST = 1024 * 1024
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


STATUS_LINES = {status: _status_line(status) for status in range(100, 600)}


class NativeDownstream(Downstream):
    """Filled by the connection's parser callbacks (:meth:`feed`, :meth:`feed_end`,
    :meth:`lost`); read and answered by one handler task."""

    __slots__ = (
        "_body_ended",
        "_buffered",
        "_chunked",
        "_chunks",
        "_conn",
        "_continue_sent",
        "_head",
        "_no_body",
        "_relaying",
        "_waiter",
        "expect_continue",
        "http_version",
        "keep_alive",
        "task",
    )

    def __init__(
        self,
        conn: ProxyHttpProtocol,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        client: str,
        http_version: str,
        keep_alive: bool,
        expect_continue: bool,
    ) -> None:
        super().__init__(method, raw_path, query, headers, client)
        self._conn = conn
        self.http_version = http_version
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.task: asyncio.Task[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._body_ended = False  # the parser saw the end of the body
        self._waiter: asyncio.Future[None] | None = None
        self._continue_sent = False
        self._head: bytes | None = None  # the response head, sent with the first body bytes
        self._chunked = False
        self._no_body = False
        self._relaying: Reply | None = None

    # --- fed by the connection ----------------------------------------------------------------

    def feed(self, chunk: bytes) -> None:
        if self.finished:  # answered without reading it all (an error): drop the rest
            self._buffered += len(chunk)
            if self._buffered > DISCARD_AT_MOST:
                self._conn.transport.close()
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > PAUSE_BODY_AT:
            self._conn.pause_reading()
        self._wake()

    def feed_end(self) -> None:
        self._body_ended = True
        self._wake()

    def lost(self) -> None:
        """The connection closed. Before the answer is complete, that is the client leaving:
        the handler is cancelled, which closes its upstream request and frees its slot."""
        if self.finished:
            self._wake()
            return
        self.disconnected = True
        self._wake()
        task = self.task
        if task is None or task.done():
            return
        if self.delivered:  # the client has it all: let the backend's reply end normally
            self._conn.loop.call_later(FINISH_AFTER_DONE, task.cancel)
        else:
            task.cancel()

    def writable(self) -> None:
        """The client's socket drained: a paused relay may go on."""
        if self._relaying is not None:
            self._relaying.resume()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def body_ended(self) -> bool:
        return self._body_ended

    def drop_body(self) -> bool:
        """The answer is complete: whatever of the body is left will be read and dropped.
        ``False`` when the connection cannot be kept (the client still waits for
        ``100 Continue`` and will not send the body the parser expects)."""
        self._chunks.clear()
        self._buffered = 0
        return self._body_ended or not self.expect_continue or self._continue_sent

    # --- request body -------------------------------------------------------------------------

    async def read_body(self, limit: int) -> bytes:
        chunks = self._chunks
        if self._body_ended and len(chunks) <= 1 and not self.body_complete:
            chunk = chunks.popleft() if chunks else b""  # the usual case: all here, one piece
            self._buffered = 0
            self.received += len(chunk)
            if self.received > limit:
                raise too_large(limit)
            self.body_complete = True
            return chunk
        return await super().read_body(limit)

    async def body_chunks(self, limit: int) -> AsyncIterator[bytes]:
        chunks = self._chunks
        while not self.body_complete:
            if chunks:
                chunk = chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < PAUSE_BODY_AT // 4:
                    self._conn.resume_reading()
                self.received += len(chunk)
                if self.received > limit:
                    raise too_large(limit)
                if not chunks and self._body_ended:
                    self.body_complete = True
                yield chunk
            elif self._body_ended:
                self.body_complete = True
            elif self.disconnected:
                raise ClientGone("client disconnected while sending the body")
            else:
                if self.expect_continue and not self._continue_sent and not self.started:
                    self._continue_sent = True  # the client waits for this to send the body
                    self._conn.transport.write(CONTINUE)
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    async def wait_over(self) -> None:
        """Until the answer is complete or the client is gone (for ASGI apps, which then hear
        ``http.disconnect``, as uvicorn tells them)."""
        while not self.disconnected and not self.finished:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    # --- response -----------------------------------------------------------------------------

    def _make_head(
        self, status: int, headers: list[tuple[bytes, bytes]], length: int | None = None
    ) -> bytes:
        """The status line and headers (names in lower case, as in ASGI); decides how the
        body is framed."""
        parts = [STATUS_LINES.get(status) or _status_line(status), self._conn.default_headers()]
        has_length = False
        for name, value in headers:
            if name == b"content-length":
                if length is not None:
                    continue  # ours, below
                has_length = True
            elif name == b"connection" or name == b"transfer-encoding":
                continue  # ours to decide
            parts += (name, b": ", value, b"\r\n")
        if length is not None:
            parts.append(b"content-length: %d\r\n" % length)
        elif self.method == "HEAD" or status in (204, 304) or status < 200:
            self._no_body = True
        elif not has_length:
            if self.http_version == "1.1":
                self._chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0: the end of the body is the end of the line
        if self.method == "HEAD":
            self._no_body = True
        if not self._body_ended and self.expect_continue and not self._continue_sent:
            self.keep_alive = False  # the client waits for 100 Continue: the body never comes
        if not self.keep_alive or self._conn.closing:
            self.keep_alive = False
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def _write(self, chunk: bytes, last: bool = False) -> None:
        if self.disconnected:
            return
        head, self._head = self._head, None
        if self._no_body:
            data = head or b""
        elif self._chunked:
            framed = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunk else b""
            data = (head or b"") + framed + (b"0\r\n\r\n" if last else b"")
        else:
            data = head + chunk if head is not None else chunk
        if data:
            self._conn.transport.write(data)
        if last:
            self._wake()  # an ASGI app waiting in receive() hears that it is over
            self._conn.response_complete(self)

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """Prepare the head: it goes out with the first body bytes, or at :meth:`flush` when
        those are not at hand (the client must not wait for headers that are ready)."""
        self.started = True
        self.status = status
        self._head = self._make_head(status, headers)

    def flush(self) -> None:
        """Send the head now if it is still waiting for body bytes."""
        head, self._head = self._head, None
        if head is not None and not self.disconnected:
            self._conn.transport.write(head)

    async def send(self, chunk: bytes) -> None:
        if self.first_byte is None:
            self.first_byte = time.perf_counter()
        self._write(chunk)
        if self._conn.write_paused:
            await self._conn.drain()

    async def progress(self, chunk: bytes) -> None:
        self._write(chunk)
        if self._conn.write_paused:
            await self._conn.drain()

    async def end(self, chunk: bytes = b"") -> None:
        self.finished = True
        if chunk and self.first_byte is None:
            self.first_byte = time.perf_counter()
        self._write(chunk, last=True)

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.started = True
        self.finished = True
        self.status = status
        self._head = self._make_head(status, headers, len(body))
        self._write(body, last=True)

    async def relay_body(self, reply: Reply, tail: Tail) -> None:
        """The backend connection's callback writes each chunk straight to the client."""

        def sink(chunk: bytes) -> bool:
            if self.first_byte is None:
                self.first_byte = time.perf_counter()
            tail.add(chunk)
            self._write(chunk)
            self.delivered = ends_stream(chunk)
            return not self._conn.write_paused

        if not reply.ready:
            self.flush()  # the backend is still thinking: the client gets the head now
        self._relaying = reply
        try:
            await reply.forward(sink)
        finally:
            self._relaying = None

    def cut(self, reason: BaseException) -> None:
        """Close the connection after what was written: the client sees the reply end early
        (a short body, or a chunked body without its last chunk)."""
        self.finished = True
        self.keep_alive = False
        self._conn.response_complete(self)

    def close(self) -> None:
        if not self.finished and not self.disconnected:
            # The handler ended without completing its answer: never leave the client waiting.
            self.cut(RuntimeError("reply not completed"))
        self.finished = True
