"""The client side of one proxied request: its head, its body, the answer, the client leaving.

:class:`Downstream` is what the OpenAI routes talk to. Two kinds exist:

- :class:`proxy.native.NativeDownstream`, on the proxy's own HTTP/1.1 connections
  (:mod:`proxy.server`): the fast path ``modelplane run`` uses;
- :class:`AsgiDownstream`, on ASGI receive/send, so that the app still answers ``/v1`` when some
  other ASGI server runs it. Once the body is read, a small task waits on ``receive()``;
  ``http.disconnect`` before the answer is complete cancels the handler task, which closes the
  upstream connection (so the backend stops generating) and frees the request's queue slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from litestar.types import Receive, Scope, Send

from proxy.errors import ProxyError, too_large
from proxy.upstream import Reply
from proxy.usage import Tail

# An OpenAI stream's last event. A client may hang up as soon as it has it, before the backend has
# ended its reply: the request then still completes (usage counted, status 200) if the backend
# ends it within this many seconds; else it is cancelled like any other that lost its client.
END_OF_STREAM = b"data: [DONE]"
FINISH_AFTER_DONE = 5.0


def ends_stream(chunk: bytes) -> bool:
    """Whether ``chunk`` ends with the stream's last event."""
    return chunk[-32:].rstrip().endswith(END_OF_STREAM)


class ClientGone(Exception):
    """The client disconnected before the answer was complete."""


class Downstream:
    """One request as the proxy sees it: the head, the body as it arrives, and the answer.

    ``start``/``send``/``end`` stream an answer, ``respond`` sends a whole one, ``fail`` answers
    with an error (an SSE error event once a stream has started)."""

    __slots__ = (
        "body_complete",
        "client",
        "delivered",
        "disconnected",
        "finished",
        "first_byte",
        "headers",
        "method",
        "query",
        "raw_path",
        "received",
        "started",
        "status",
    )

    def __init__(
        self,
        method: str,
        raw_path: bytes,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        client: str,
    ) -> None:
        self.method = method
        self.raw_path = raw_path  # percent-encoded, as sent
        self.query = query
        self.headers = headers  # names lower-cased
        self.client = client
        self.started = False  # response headers sent (or, natively, queued to go with the body)
        self.finished = False  # last body message sent
        self.disconnected = False
        self.status = 0
        self.first_byte: float | None = None  # perf_counter() of the first body byte sent
        self.received = 0  # request body bytes read
        self.body_complete = False
        self.delivered = False  # a relayed stream's last event is sent (see END_OF_STREAM)

    # --- request body ------------------------------------------------------------------------

    async def read_body(self, limit: int) -> bytes:
        """The whole body; 413 past ``limit`` (without reading the rest)."""
        chunks = [chunk async for chunk in self.body_chunks(limit)]
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)  # one chunk: no copy

    def body_chunks(self, limit: int) -> AsyncIterator[bytes]:
        """The body as it arrives. Raises 413 past ``limit``, :class:`ClientGone` on
        disconnect. May be called again to continue where an abandoned iteration stopped."""
        raise NotImplementedError

    # --- response -----------------------------------------------------------------------------

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        raise NotImplementedError

    async def send(self, chunk: bytes) -> None:
        raise NotImplementedError

    async def comment(self, text: str) -> None:
        """An SSE comment line (ignored by clients, keeps idle-timeouts away); not a first token."""
        await self.progress(b": %s\n\n" % text.encode())

    async def progress(self, chunk: bytes) -> None:
        """Bytes on an open stream that are not the answer (loading comments or deltas): they
        do not count as its first byte."""
        raise NotImplementedError

    async def end(self, chunk: bytes = b"") -> None:
        raise NotImplementedError

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A complete answer in one go (content-length set here)."""
        headers.append((b"content-length", str(len(body)).encode()))
        await self.start(status, headers)
        await self.end(body)

    async def respond_json(self, status: int, body: bytes) -> None:
        await self.respond(status, [(b"content-type", b"application/json")], body)

    async def fail(self, error: ProxyError, unfinished: bytes = b"") -> None:
        """Answer with an error: as an HTTP error before the response started, as an SSE error
        event (then the end of the stream) after; ``unfinished`` first ends an event the
        backend left half-sent."""
        if self.finished or self.disconnected:
            return
        if not self.started:
            await self.respond(error.status, error.headers(), error.body())
        else:
            await self.end(unfinished + error.sse_event())

    async def relay_body(self, reply: Reply, tail: Tail) -> None:
        """Copy ``reply``'s body to the client as it arrives (``tail`` keeps its end, for the
        token usage); raises :class:`~proxy.upstream.UpstreamError` if the backend breaks."""
        async for chunk in reply.aiter_raw():
            await self.send(chunk)
            tail.add(chunk)
            self.delivered = ends_stream(chunk)

    def cut(self, reason: BaseException) -> None:
        """End a reply that cannot be completed so that the client sees it cut off."""
        raise reason

    def close(self) -> None:
        """The handler is done with this request."""
        self.finished = True


class AsgiDownstream(Downstream):
    """A request on ASGI ``receive``/``send`` (the app served by another ASGI server)."""

    __slots__ = ("_receive", "_send", "_task", "_watcher")

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path = scope.get("raw_path") or (scope.get("root_path", "") + scope["path"]).encode()
        client = scope.get("client")
        super().__init__(
            scope["method"],
            raw_path,
            scope.get("query_string", b""),
            scope["headers"],
            client[0] if client else "",
        )
        self._receive = receive
        self._send = send
        self._task: asyncio.Task[object] | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def body_chunks(self, limit: int) -> AsyncIterator[bytes]:
        while not self.body_complete:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise ClientGone("client disconnected while sending the body")
            chunk = message.get("body", b"")
            self.received += len(chunk)
            if self.received > limit:
                raise too_large(limit)
            if not message.get("more_body", False):
                self.body_complete = True
                self._watch()
            if chunk:
                yield chunk

    def _watch(self) -> None:
        if self._watcher is None:
            self._task = asyncio.current_task()
            if self._task is not None:
                self._watcher = asyncio.get_running_loop().create_task(self._wait_disconnect())

    async def _wait_disconnect(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if not self.finished and self._task is not None:
            self.disconnected = True
            if self.delivered:  # the client has it all: let the backend's reply end normally
                asyncio.get_running_loop().call_later(FINISH_AFTER_DONE, self._task.cancel)
            else:
                self._task.cancel()

    def close(self) -> None:
        self.finished = True  # a disconnect from now on cancels nothing
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def send(self, chunk: bytes) -> None:
        if self.first_byte is None:
            self.first_byte = time.perf_counter()
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def progress(self, chunk: bytes) -> None:
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def end(self, chunk: bytes = b"") -> None:
        self.finished = True  # before the await: a disconnect now is no reason to cancel
        if chunk and self.first_byte is None:
            self.first_byte = time.perf_counter()
        await self._send({"type": "http.response.body", "body": chunk, "more_body": False})
