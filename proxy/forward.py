"""Forwarding to backends with httpx: pooled clients, header hygiene, and relaying the reply.

One ``httpx.AsyncClient`` per backend endpoint keeps HTTP/1.1 connections alive between
requests. Requests are built as bare ``httpx.Request`` objects (the client's default headers,
``Accept-Encoding`` among them, are not added: the backend sees the client's own). Replies are
relayed as raw bytes (``aiter_raw``: no decoding, no re-encoding): streamed chunk by chunk as they
arrive, except a JSON reply of known size, which is read whole so its token usage can be counted.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass

import httpx

from proxy import errors
from proxy.channel import Downstream
from proxy.errors import ProxyError
from proxy.settings import ProxySettings
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
# Host and Content-Length are set by httpx for the backend; Expect is answered by our server;
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
    raw: Iterable[tuple[bytes, bytes]], keep_length: bool
) -> list[tuple[bytes, bytes]]:
    """The backend's reply headers for the client, names lower-cased for ASGI."""
    listed = _connection_listed(raw)
    out = []
    for name, value in raw:
        name = name.lower()
        if name in _RESPONSE_DROP or name in listed:
            if keep_length and name == b"content-length":
                out.append((name, value))
            continue
        out.append((name, value))
    return out


def classify(model: str, exc: httpx.HTTPError) -> tuple[ProxyError, bool]:
    """The error answer for a transport failure, and whether the backend counts as failed.

    A slow backend (read/write timeout) is not broken; a refused or dropped connection is.
    """
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, httpx.ConnectTimeout):
        return errors.backend_timeout(model, reason), True
    if isinstance(exc, httpx.TimeoutException):
        return errors.backend_timeout(model, reason), False
    return errors.backend_error(model, reason), True


class BackendPool:
    """One pooled ``httpx.AsyncClient`` per backend endpoint.

    A client whose endpoint no model uses any more (the model stopped or moved to another port)
    is closed when a new endpoint appears, once no request is using it.
    """

    def __init__(self, settings: ProxySettings, live_endpoints: Callable[[], set[str]]) -> None:
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._active: dict[str, int] = {}
        self._live_endpoints = live_endpoints
        self._timeout = httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.write_timeout,
            pool=None,  # our queue bounds concurrency; the pool has no limit to wait on
        )
        self._limits = httpx.Limits(
            max_connections=None,
            max_keepalive_connections=settings.keepalive_connections,
            keepalive_expiry=settings.keepalive_expiry,
        )

    def acquire(self, endpoint: str) -> httpx.AsyncClient:
        client = self._clients.get(endpoint)
        if client is None:
            self._retire_unused()
            client = self._clients[endpoint] = httpx.AsyncClient(
                timeout=self._timeout,
                limits=self._limits,
                trust_env=False,  # an HTTP_PROXY in the environment must not catch loopback
                follow_redirects=False,
            )
        self._active[endpoint] = self._active.get(endpoint, 0) + 1
        return client

    def release(self, endpoint: str) -> None:
        self._active[endpoint] -= 1

    def _retire_unused(self) -> None:
        live = self._live_endpoints()
        for endpoint in list(self._clients):
            if endpoint not in live and not self._active.get(endpoint):
                self._active.pop(endpoint, None)
                _close_later(self._clients.pop(endpoint))

    @property
    def endpoints(self) -> list[str]:
        return list(self._clients)

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()


_closing: set[asyncio.Task[None]] = set()  # strong references until the tasks finish


def _close_later(client: httpx.AsyncClient) -> None:
    task = asyncio.get_running_loop().create_task(client.aclose())
    _closing.add(task)
    task.add_done_callback(_closing.discard)


async def send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    headers: list[tuple[bytes, bytes]],
    content: bytes | AsyncIterable[bytes],
) -> httpx.Response:
    """Send the request; the reply's headers are read, its body not yet."""
    request = httpx.Request(method, url, headers=headers, content=content)
    return await client.send(request, stream=True)


# --- relaying the reply ---------------------------------------------------------------------------


@dataclass(slots=True)
class Relayed:
    """What happened while relaying: for metrics, the request log and backend_failed."""

    usage: Usage | None = None
    broken: ProxyError | None = None  # the backend failed mid-body
    backend_failed: bool = False


def _is_json(content_type: str) -> bool:
    return content_type.startswith("application/json") or content_type.endswith("+json")


async def relay(
    down: Downstream,
    response: httpx.Response,
    model: str,
    max_buffered: int,
) -> Relayed:
    """Pass the reply to the client (status, headers, body) as it arrives."""
    content_type = response.headers.get("content-type", "")
    length = response.headers.get("content-length")
    if (
        _is_json(content_type)
        and length is not None
        and length.isdigit()
        and int(length) <= max_buffered
        and not response.headers.get("content-encoding")
    ):
        return await _relay_whole(down, response, model)
    return await _relay_stream(down, response, model, is_sse=content_type.startswith("text/event"))


async def _relay_whole(down: Downstream, response: httpx.Response, model: str) -> Relayed:
    try:
        body = b"".join([chunk async for chunk in response.aiter_raw()])
    except httpx.HTTPError as exc:
        error, failed = classify(model, exc)
        await down.fail(error)
        return Relayed(broken=error, backend_failed=failed)
    headers = response_headers(response.headers.raw, keep_length=False)
    await down.respond(response.status_code, headers, body)
    return Relayed(usage=find_usage(body) if response.status_code < 400 else None)


async def _relay_stream(
    down: Downstream, response: httpx.Response, model: str, is_sse: bool
) -> Relayed:
    headers = response_headers(response.headers.raw, keep_length=True)
    await down.start(response.status_code, headers)
    return await pump(down, response, model, is_sse)


async def pump(down: Downstream, response: httpx.Response, model: str, is_sse: bool) -> Relayed:
    """Copy the body chunk by chunk; on a backend failure end an SSE stream with an error event
    (other bodies are cut off: the client sees an incomplete reply)."""
    tail = Tail()
    try:
        async for chunk in response.aiter_raw():
            await down.send(chunk)
            tail.add(chunk)
    except httpx.HTTPError as exc:
        error, failed = classify(model, exc)
        if is_sse:
            await down.end(error.sse_event())
            return Relayed(broken=error, backend_failed=failed)
        raise BrokenReply(error, failed) from exc
    await down.end()
    return Relayed(usage=find_usage(tail.bytes()) if is_sse else None)


class BrokenReply(Exception):
    """A non-SSE reply broke after its headers were sent: the connection must be cut."""

    def __init__(self, error: ProxyError, backend_failed: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.backend_failed = backend_failed
