"""The proxy's HTTP/1.1 connections: the OpenAI routes with no ASGI layer in between.

uvicorn still runs the server (sockets, lifespan, signals, graceful shutdown); this protocol
takes the place of its per-connection HTTP handling::

    uvicorn.Config(app, http=http_protocol(app))

Requests for ``/v1/...`` and ``/upstream/...`` are parsed here (httptools, as uvicorn does) into
a :class:`~proxy.native.NativeDownstream` and handed to the OpenAI routes, one task each.
Everything else (probes, metrics, the admin API) goes to the Litestar app over ASGI
(:mod:`proxy.asgi_bridge`), as under uvicorn's own protocol.

A connection answers one request at a time: pipelined requests wait their turn (reading pauses
meanwhile). An idle connection closes after uvicorn's ``timeout_keep_alive``, counted from the
last byte received or sent, with one timer per connection rather than one per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import httptools

from proxy.asgi_bridge import serve_asgi
from proxy.forwarded import ForwardedFor, forwarded_for
from proxy.native import STATUS_LINES, NativeDownstream

if TYPE_CHECKING:
    from litestar import Litestar
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from proxy.openai_routes import OpenAIRoutes

log = logging.getLogger("modelplane.proxy")

Handler = Callable[[NativeDownstream], Awaitable[None]]  # None below: the app, over ASGI


def settle_gc() -> None:
    """Call once the process serves (``modelplane run`` does, after its first pass).

    What exists by then (modules, manifests, the first pass) lives as long as the process:
    frozen, the collector's full passes no longer walk it (they took tens of milliseconds, a
    stall for every request in flight). And a request's objects are freed by reference
    counting as it ends: with the default threshold (700 live allocations), 64 requests in
    flight set off a young-generation pass every few requests for nothing; 10,000 lets them
    finish first.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def http_protocol(app: Litestar) -> Callable[..., ProxyHttpProtocol]:
    """What to pass as uvicorn's ``http`` for an app made by :func:`proxy.create_app`."""
    return partial(ProxyHttpProtocol, routes=app.state.openai)


def _is_under(path: bytes, prefix: bytes) -> bool:
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == 47)


class ProxyHttpProtocol(asyncio.Protocol):
    """One client connection. Created by uvicorn for each accepted socket."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        routes: OpenAIRoutes,
    ) -> None:
        if not config.loaded:
            config.load()
        self.config = config
        self.routes = routes
        self.asgi_app = config.loaded_app
        self.app_state = app_state
        self.server_state = server_state
        self.loop = _loop or asyncio.get_event_loop()
        self.keep_alive_timeout = float(config.timeout_keep_alive)
        self.parser = httptools.HttpRequestParser(self)
        with contextlib.suppress(AttributeError):  # httptools < 0.6.3 has no leniencies
            # As uvicorn: bytes after a "Connection: close" request are ignored, not an error.
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.client_addr: tuple[str, int] | None = None
        self.server_addr: tuple[str, int] | None = None
        self.client = ""
        self.forwarded: ForwardedFor | None = None  # set when the peer is a trusted proxy
        self.current: NativeDownstream | None = None  # being answered
        self.parsing: NativeDownstream | None = None  # being received (current, or pipelined)
        self.pipeline: deque[tuple[NativeDownstream, Handler | None]] = deque()
        self.write_paused = False
        self.closing = False  # shutting down: close once the current answer is complete
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._broken = False  # the client sent something unparsable: ignore the rest
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect_continue = False
        self._forwarded_for: bytes | None = None
        self._last_active = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._defaults_from: object = None
        self._defaults = b""

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server_state.connections.add(self)  # type: ignore[arg-type]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple | list) and len(peer) >= 2:
            self.client_addr = (str(peer[0]), int(peer[1]))
            self.client = self.client_addr[0]
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple | list) and len(local) >= 2:
            self.server_addr = (str(local[0]), int(local[1]))
        if self.config.proxy_headers and self.client:
            forwarded = forwarded_for(self.config.forwarded_allow_ips)
            if forwarded.trusts(self.client):
                self.forwarded = forwarded
        self._last_active = self.loop.time()
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        if self._broken:
            return
        self._last_active = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._no_upgrade()
        except httptools.HttpParserError as exc:
            self._bad_request(exc)

    def eof_received(self) -> bool | None:
        return None  # close our side too, once what is written has gone

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)  # type: ignore[arg-type]
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for request in {self.current, self.parsing, *(r for r, _ in self.pipeline)}:
            if request is not None:
                request.lost()
        self.pipeline.clear()
        self.current = self.parsing = None
        self.write_paused = False  # nothing will drain any more: writers must not wait
        self._wake_drain()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()
        if self.current is not None:
            self.current.writable()

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expect_continue = False
        self._forwarded_for = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._headers.append((name, value))
        if name == b"expect":
            self._expect_continue = value.lower() == b"100-continue"
        elif name == b"x-forwarded-for" and self.forwarded is not None:
            self._forwarded_for = value

    def on_headers_complete(self) -> None:
        parser = self.parser
        url = self._url
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
        else:  # absolute-form or '*'
            parsed = httptools.parse_url(url)
            path, query = parsed.path or b"/", parsed.query or b""
        client = self.client
        if self._forwarded_for is not None and self.forwarded is not None:
            client = self.forwarded.client(self._forwarded_for) or client
        request = NativeDownstream(
            self,
            parser.get_method().decode("ascii"),
            path,
            query,
            self._headers,
            client,
            parser.get_http_version(),
            parser.should_keep_alive(),
            self._expect_continue,
        )
        handler: Handler | None = None
        if _is_under(path, b"/v1"):
            handler = self.routes.serve_v1
        elif _is_under(path, b"/upstream"):
            handler = self.routes.serve_upstream
        self.parsing = request
        if self.current is None:
            self._begin(request, handler)
        else:  # pipelined: answered after the current one
            self.pipeline.append((request, handler))
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.feed(body)

    def on_message_complete(self) -> None:
        if self.parsing is not None:
            self.parsing.feed_end()

    # --- requests -----------------------------------------------------------------------------

    def _begin(self, request: NativeDownstream, handler: Handler | None) -> None:
        self.current = request
        if handler is None:
            # Like uvicorn: the app hears of a disconnect from receive(), it is not cancelled.
            task = self.loop.create_task(serve_asgi(self.asgi_app, request, self))
        else:
            task = self.loop.create_task(handler(request))
            request.task = task  # cancelled when the client leaves (see NativeDownstream.lost)
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def response_complete(self, request: NativeDownstream) -> None:
        """The last byte of ``request``'s answer is written: the next request may go."""
        self.server_state.total_requests += 1
        if self.current is request:
            self.current = None
        transport = self.transport
        if transport.is_closing():
            return
        if not request.keep_alive or self.closing or not request.drop_body():
            transport.close()  # after what is written
            return
        if self.pipeline:
            following, handler = self.pipeline.popleft()
            self._begin(following, handler)
            if not self.pipeline:
                self.resume_reading()
            return
        self.resume_reading()
        self._last_active = self.loop.time()
        self._arm_idle_timer()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close now if idle, else after the current answer."""
        self.closing = True
        if self.current is None and self.transport is not None:
            self.transport.close()

    # --- flow control -------------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and not self.pipeline and not self.transport.is_closing():
            self._reading_paused = False
            self.transport.resume_reading()

    async def drain(self) -> None:
        """Wait until the client's socket takes more (or the connection is gone)."""
        if not self.write_paused:
            return
        if self._drain is None or self._drain.done():
            self._drain = self.loop.create_future()
        await asyncio.shield(self._drain)

    def _wake_drain(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # --- helpers ------------------------------------------------------------------------------

    def default_headers(self) -> bytes:
        """uvicorn's Date and Server headers, encoded (uvicorn renews the list every second)."""
        source = self.server_state.default_headers
        if source is not self._defaults_from:
            self._defaults_from = source
            self._defaults = b"".join(b"%s: %s\r\n" % pair for pair in source)
        return self._defaults

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_at(
                self._last_active + self.keep_alive_timeout, self._on_idle_timer
            )

    def _on_idle_timer(self) -> None:
        self._idle_timer = None
        if self.current is not None or self.transport.is_closing():
            return  # busy: armed again when the answer is complete
        deadline = self._last_active + self.keep_alive_timeout
        if self.loop.time() >= deadline:
            self.transport.close()
        else:
            self._idle_timer = self.loop.call_at(deadline, self._on_idle_timer)

    def _bad_request(self, exc: Exception) -> None:
        self._broken = True
        if isinstance(exc, httptools.HttpParserCallbackError):
            log.error("error while reading a request", exc_info=exc)
        else:
            log.warning("invalid HTTP request from %s: %s", self.client, exc)
        if self.current is not None:
            self.current.keep_alive = False  # answer it, then close
            return
        message = b"Invalid HTTP request received."
        self.transport.write(
            STATUS_LINES[400]
            + self.default_headers()
            + b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
            + b"content-length: %d\r\n\r\n%s" % (len(message), message)
        )
        self.transport.close()

    def _no_upgrade(self) -> None:
        """Protocol upgrades (WebSocket, h2c) are not offered: the request is answered as
        plain HTTP, then the connection closes (what follows is not HTTP/1.1)."""
        self._broken = True
        request = self.parsing
        if request is not None:
            request.keep_alive = False
            if not request.body_ended:
                request.feed_end()
