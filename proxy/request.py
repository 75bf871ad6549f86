"""One proxied request: the headers the proxy reads, what it sends on, and its bookkeeping
(metrics, the request log record, the access-log line) once it is over."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass

from proxy import errors
from proxy.channel import Downstream
from proxy.core import ProxyCore
from proxy.gateway import RequestRecord
from proxy.logsetup import access_log
from proxy.usage import Usage

log = logging.getLogger("modelplane.proxy")

DISCONNECTED = 499  # nginx's status for "client closed request", in logs and metrics


@dataclass(slots=True)
class Exchange:
    """One request's bookkeeping, from arrival to the access-log line."""

    start: float
    wall: float
    client: str
    method: str
    path: str
    requested: str = ""  # the model name the client sent
    model: str = ""  # the route it resolved to
    status: int = 0  # the outcome when it differs from the status sent (499, 502 mid-stream)
    usage: Usage | None = None
    streamed: bool = False
    stay_warm: float | None = None  # x_stay_warm: seconds the model stays loaded after this


@dataclass(slots=True)
class Outgoing:
    """What goes to the backend."""

    target: str  # path and query
    headers: list[tuple[bytes, bytes]]
    content: AsyncIterable[bytes] | bytes
    content_length: int | None = None  # of streamed content; None: it is sent chunked


@dataclass(slots=True)
class RequestHeaders:
    authorization: str | None = None
    content_type: str = ""
    content_length: int | None = None
    chunked: bool = False
    x_priority: str | None = None


def pick_headers(headers: list[tuple[bytes, bytes]]) -> RequestHeaders:
    """The few request headers the proxy itself reads, in one pass."""
    picked = RequestHeaders()
    for name, value in headers:
        if name == b"authorization":
            picked.authorization = value.decode("latin-1")
        elif name == b"content-type":
            picked.content_type = value.decode("latin-1")
        elif name == b"content-length":
            if not value.strip().isdigit():
                raise errors.bad_request(f"invalid Content-Length {value!r}", "invalid_header")
            picked.content_length = int(value)
        elif name == b"transfer-encoding":
            picked.chunked = b"chunked" in value.lower()
        elif name == b"x-priority":
            picked.x_priority = value.decode("latin-1")
    return picked


def target(path: bytes, query: bytes) -> str:
    """What the backend is asked for: the path and query as the client sent them."""
    return (path + b"?" + query if query else path).decode("latin-1")


def finish(ex: Exchange, down: Downstream, core: ProxyCore, upstream: bool) -> None:
    """Metrics, the request log, the access log: once per request, whatever happened."""
    latency = time.perf_counter() - ex.start
    status = ex.status or down.status or 500
    ttft = down.first_byte - ex.start if ex.streamed and down.first_byte is not None else None
    usage = ex.usage
    metrics = core.metrics
    if upstream:
        metrics.upstream_request(ex.model, status)
    else:
        metrics.observe(ex.model, status, latency, ttft, usage)
    prompt = usage.prompt_tokens if usage else None
    completion = usage.completion_tokens if usage else None
    try:
        core.gateway.record_request(
            RequestRecord(
                ex.wall,
                ex.client,
                ex.model or ex.requested,
                ex.path,
                status,
                latency,
                ttft,
                prompt,
                completion,
            )
        )
    except Exception:
        log.exception("gateway.record_request raised")
    if core.settings.access_log:
        access_log(
            ex.client,
            ex.method,
            ex.path,
            ex.model or ex.requested,
            status,
            latency,
            ttft,
            prompt,
            completion,
        )
