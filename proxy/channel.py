"""The client side of one request, on raw ASGI (the hot path skips Litestar's Request/Response).

:class:`Downstream` reads the body (bounded), sends the answer, and watches for the client
going away: once the body is read, a small task waits on ``receive()``; ``http.disconnect``
before the answer is complete cancels the handler task, which closes the upstream connection
(so the backend stops generating) and frees the request's queue slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from litestar.types import Receive, Send

from proxy.errors import ProxyError, too_large


class ClientGone(Exception):
    """The client disconnected before the answer was complete."""


class Downstream:
    """One request's ASGI receive/send, with the state the proxy needs about it."""

    __slots__ = (
        "_receive",
        "_send",
        "_task",
        "_watcher",
        "body_complete",
        "disconnected",
        "finished",
        "first_byte",
        "received",
        "started",
        "status",
    )

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._task = asyncio.current_task()
        self._watcher: asyncio.Task[None] | None = None
        self.started = False  # response headers sent
        self.finished = False  # last body message sent
        self.disconnected = False
        self.status = 0
        self.first_byte: float | None = None  # perf_counter() of the first body byte sent
        self.received = 0  # request body bytes read
        self.body_complete = False

    # --- request body ------------------------------------------------------------------------

    async def read_body(self, limit: int) -> bytes:
        """The whole body; 413 past ``limit`` (without reading the rest)."""
        chunks = [chunk async for chunk in self.body_chunks(limit)]
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)  # one chunk: no copy

    async def body_chunks(self, limit: int) -> AsyncIterator[bytes]:
        """The body as it arrives. Raises 413 past ``limit``, :class:`ClientGone` on
        disconnect. Starts the disconnect watcher once the body is complete. May be called
        again to continue reading where an abandoned iteration stopped."""
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
        if self._watcher is None and self._task is not None:
            self._watcher = asyncio.get_running_loop().create_task(self._wait_disconnect())

    async def _wait_disconnect(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if not self.finished and self._task is not None:
            self.disconnected = True
            self._task.cancel()

    def close(self) -> None:
        """Stop watching (call when the handler is done)."""
        self.finished = True  # a disconnect from now on cancels nothing
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    # --- response -----------------------------------------------------------------------------

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        self.status = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})

    async def send(self, chunk: bytes) -> None:
        if self.first_byte is None:
            self.first_byte = time.perf_counter()
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def comment(self, text: str) -> None:
        """An SSE comment line (ignored by clients, keeps idle-timeouts away); not a first token."""
        await self._send(
            {"type": "http.response.body", "body": b": %s\n\n" % text.encode(), "more_body": True}
        )

    async def end(self, chunk: bytes = b"") -> None:
        self.finished = True  # before the await: a disconnect now is no reason to cancel
        if chunk and self.first_byte is None:
            self.first_byte = time.perf_counter()
        await self._send({"type": "http.response.body", "body": chunk, "more_body": False})

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A complete answer in one go (content-length set here)."""
        headers.append((b"content-length", str(len(body)).encode()))
        await self.start(status, headers)
        await self.end(body)

    async def respond_json(self, status: int, body: bytes) -> None:
        await self.respond(status, [(b"content-type", b"application/json")], body)

    async def fail(self, error: ProxyError) -> None:
        """Answer with an error: as an HTTP error before the response started, as an SSE error
        event (then the end of the stream) after."""
        if self.finished or self.disconnected:
            return
        if not self.started:
            await self.respond(error.status, error.headers(), error.body())
        else:
            await self.end(error.sse_event())
