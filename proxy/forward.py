"""Forwarding to backends: pools per endpoint, header hygiene, and relaying the reply.

Requests carry the client's own headers (minus hop-by-hop ones and modelplane's), so the backend
sees e.g. the client's ``Accept-Encoding``. Replies are relayed as the bytes that arrive (no
content decoding, no re-encoding): streamed chunk by chunk, except a JSON reply of known size,
which is read whole so its token usage can be counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from proxy import errors
from proxy.channel import Downstream
from proxy.errors import ProxyError
from proxy.settings import ProxySettings
from proxy.upstream import Reply, Timeouts, UpstreamError, UpstreamPool
from proxy.usage import Tail, Usage, find_usage

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Host and Content-Length are set by the upstream client; Expect is answered by our server;
# X-Priority is modelplane's own.
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length", b"expect", b"x-priority"}
_REQUEST_DROP_AUTH = _REQUEST_DROP | {b"authorization"}
# Our server writes its own Date and Server headers.
_RESPONSE_DROP = HOP_BY_HOP | {b"content-length", b"date", b"server"}


def _connection_listed(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """Header names that a ``Connection`` header declares hop-by-hop (``Connection: X-Foo``)."""
    names: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            names.update(token.strip().lower() for token in value.split(b","))
    return frozenset(names)


def request_headers(
    headers: Iterable[tuple[bytes, bytes]], drop_authorization: bool
) -> list[tuple[bytes, bytes]]:
    """The client's headers as the backend should see them (ASGI names are lower-case)."""
    drop = _REQUEST_DROP_AUTH if drop_authorization else _REQUEST_DROP
    kept = []
    connection = None
    for name, value in headers:
        if name in drop:
            if name == b"connection":
                connection = value
            continue
        kept.append((name, value))
    if connection:
        listed = _connection_listed([(b"connection", connection)])
        kept = [(name, value) for name, value in kept if name not in listed]
    return kept


def response_headers(
    raw: list[tuple[bytes, bytes]], keep_length: bool
) -> list[tuple[bytes, bytes]]:
    """The backend's reply headers for the client, names lower-cased for ASGI."""
    out = []
    connection = None
    for name, value in raw:
        name = name.lower()
        if name in _RESPONSE_DROP:
            if name == b"connection":
                connection = value
            elif keep_length and name == b"content-length":
                out.append((name, value))
            continue
        out.append((name, value))
    if connection:
        listed = _connection_listed([(b"connection", connection)])
        out = [(name, value) for name, value in out if name not in listed]
    return out


def classify(model: str, exc: UpstreamError) -> ProxyError:
    """The error answer for a failed exchange with a backend."""
    if exc.kind == "head_timeout":
        return errors.request_timeout(model, exc.seconds or 0.0)
    if exc.kind == "read_timeout":
        return errors.idle_timeout(model, exc.seconds or 0.0)
    if exc.kind in ("connect_timeout", "write_timeout"):
        return errors.backend_timeout(model, str(exc))
    return errors.backend_error(model, str(exc))


class BackendPool:
    """One keep-alive :class:`UpstreamPool` per backend endpoint.

    A pool whose endpoint no model uses any more (the model stopped or moved to another port)
    is closed when a new endpoint appears, once no request is using it.
    """

    def __init__(self, settings: ProxySettings, live_endpoints: Callable[[], set[str]]) -> None:
        self._pools: dict[str, UpstreamPool] = {}
        self._active: dict[str, int] = {}
        self._live_endpoints = live_endpoints
        self._timeouts = Timeouts(connect=settings.connect_timeout, write=settings.write_timeout)
        self._max_idle = settings.keepalive_connections
        self._idle_expiry = settings.keepalive_expiry

    def acquire(self, endpoint: str) -> UpstreamPool:
        pool = self._pools.get(endpoint)
        if pool is None:
            self._retire_unused()
            pool = self._pools[endpoint] = UpstreamPool(
                endpoint, self._timeouts, self._max_idle, self._idle_expiry
            )
        self._active[endpoint] = self._active.get(endpoint, 0) + 1
        return pool

    def release(self, endpoint: str) -> None:
        self._active[endpoint] -= 1

    def _retire_unused(self) -> None:
        live = self._live_endpoints()
        for endpoint in list(self._pools):
            if endpoint not in live and not self._active.get(endpoint):
                self._active.pop(endpoint, None)
                self._pools.pop(endpoint).close()

    @property
    def endpoints(self) -> list[str]:
        return list(self._pools)

    def close(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()


# --- relaying the reply ---------------------------------------------------------------------------


@dataclass(slots=True)
class Relayed:
    """What happened while relaying: for metrics, the request log and backend_failed."""

    usage: Usage | None = None
    broken: ProxyError | None = None  # the backend failed mid-body: not answered yet
    backend_failed: bool = False
    unfinished: bytes = b""  # what ends a half-sent event before an error event follows


def _is_json(content_type: bytes) -> bool:
    return content_type.startswith(b"application/json") or content_type.endswith(b"+json")


def is_sse(reply: Reply) -> bool:
    return reply.content_type.startswith(b"text/event-stream")


async def relay(down: Downstream, reply: Reply, model: str, max_buffered: int) -> Relayed:
    """Pass the reply to the client (status, headers, body) as it arrives."""
    length = reply.content_length
    if (
        _is_json(reply.content_type)
        and length is not None
        and length <= max_buffered
        and not reply.content_encoding
    ):
        return await _relay_whole(down, reply, model)
    await down.start(reply.status, response_headers(reply.headers, keep_length=True))
    return await pump(down, reply, model, is_sse(reply))


async def _relay_whole(down: Downstream, reply: Reply, model: str) -> Relayed:
    try:
        body = await reply.aread()
    except UpstreamError as exc:
        return Relayed(broken=classify(model, exc), backend_failed=exc.backend_failed)
    await down.respond(reply.status, response_headers(reply.headers, keep_length=False), body)
    return Relayed(usage=find_usage(body) if reply.status < 400 else None)


async def pump(down: Downstream, reply: Reply, model: str, sse: bool) -> Relayed:
    """Copy the body as it arrives. A backend failure in an SSE stream is returned (the caller
    ends the stream with an error event); other bodies are cut off (:class:`BrokenReply`)."""
    tail = Tail()
    try:
        await down.relay_body(reply, tail)
    except UpstreamError as exc:
        error = classify(model, exc)
        if sse:
            return Relayed(
                broken=error, backend_failed=exc.backend_failed, unfinished=tail.event_end()
            )
        raise BrokenReply(error, exc.backend_failed) from exc
    await down.end()
    return Relayed(usage=find_usage(tail.bytes()) if sse else None)


class BrokenReply(Exception):
    """A non-SSE reply broke after its headers were sent: the connection must be cut."""

    def __init__(self, error: ProxyError, backend_failed: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.backend_failed = backend_failed
