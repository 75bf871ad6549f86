"""Probes, metrics and the admin API, as ordinary Litestar handlers (none is on the hot path).

``/healthz`` and ``/readyz`` are open (probes carry no keys). ``/metrics`` and ``/api/*`` need an
admin key when keys are configured (see :mod:`proxy.auth`).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from litestar import Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.response import Stream
from prometheus_client import CONTENT_TYPE_LATEST

from proxy import errors
from proxy.auth import check
from proxy.core import ProxyCore
from proxy.errors import ProxyError
from proxy.gateway import Refused, Unavailable
from proxy.queueing import QueueStats


def merge_queue_stats(status: dict[str, Any], stats: Mapping[str, QueueStats]) -> dict[str, Any]:
    """Add the proxy's numbers to each model of ``gateway.status()``: ``queued`` (only the proxy
    knows it) and ``inFlight`` (when the gateway did not say)."""
    models = status.get("models")
    entries: list[tuple[str, Any]] = []
    if isinstance(models, dict):
        entries = list(models.items())
    elif isinstance(models, list):
        entries = [(m.get("name", ""), m) for m in models if isinstance(m, dict)]
    for name, entry in entries:
        if isinstance(entry, dict):
            queue = stats.get(name) or QueueStats(0, 0)
            entry["queued"] = queue.queued
            entry.setdefault("inFlight", queue.in_flight)
    return status


def _sse(event: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(event, default=str).encode() + b"\n\n"


def admin_handlers(core: ProxyCore) -> list[BaseRouteHandler]:
    gateway = core.gateway

    def admin_guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
        check(gateway.api_keys(), connection.headers.get("authorization"), admin=True)

    guards = [admin_guard]

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, str]:
        """The process is alive and serving HTTP."""
        return {"status": "ok"}

    @get("/readyz", sync_to_thread=False)
    def readyz() -> Response[dict[str, Any]]:
        ready, reason = gateway.readiness()
        return Response({"ready": ready, "reason": reason}, status_code=200 if ready else 503)

    @get("/metrics", guards=guards, sync_to_thread=False)
    def metrics() -> Response[bytes]:
        return Response(core.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @get("/api/status", guards=guards)
    async def status() -> dict[str, Any]:
        return merge_queue_stats(await gateway.status(), core.queues.stats())

    @get("/api/events", guards=guards)
    async def events(request: Request) -> Response:
        """``?model=NAME`` filters, ``?limit=N`` (default 100), ``?follow=1`` streams SSE."""
        query = request.query_params
        model = query.get("model") or None
        limit_text = query.get("limit", "100")
        if not limit_text.isdigit():
            raise errors.bad_request(f"limit must be a whole number, got {limit_text!r}")
        follow = query.get("follow", "").lower() in ("1", "true", "yes")
        history = await gateway.events(model=model, limit=int(limit_text))
        if not follow:
            return Response(history)

        async def stream() -> AsyncIterator[bytes]:
            for event in history:
                yield _sse(event)
            async for event in gateway.follow_events():
                if model is None or event.get("model") == model:
                    yield _sse(event)

        return Stream(
            stream(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    @post("/api/reconcile", guards=guards, status_code=200)
    async def reconcile() -> dict[str, Any]:
        return await gateway.reconcile()

    async def _by_hand(name: str, action: str) -> dict[str, Any]:
        route = gateway.route(name)
        if route is None:
            raise errors.model_not_found(name)
        try:
            if action == "load":
                await gateway.load(route.name)
            else:
                await gateway.unload(route.name)
        except Refused as exc:
            raise ProxyError(409, str(exc), "invalid_request_error", "refused") from None
        except Unavailable as exc:
            raise errors.unavailable(exc.message, exc.status, exc.retry_after) from None
        after = gateway.route(route.name)
        return {"model": route.name, "action": action, "phase": after.phase if after else None}

    # Parameters are read from the request rather than declared: the declaration style changed
    # across Litestar 2.x releases, this works with all of them.
    @post("/api/models/{name:str}/load", guards=guards, status_code=200)
    async def load(request: Request) -> dict[str, Any]:
        return await _by_hand(request.path_params["name"], "load")

    @post("/api/models/{name:str}/unload", guards=guards, status_code=200)
    async def unload(request: Request) -> dict[str, Any]:
        return await _by_hand(request.path_params["name"], "unload")

    @get("/api/history", guards=guards)
    async def history(request: Request) -> list[dict[str, Any]]:
        """Applied generations, oldest first (``?limit=N``, default 20)."""
        return await gateway.history(_count(request, "limit", 20))

    @get("/api/models/{name:str}/logs", guards=guards)
    async def logs(request: Request) -> Response[str]:
        """The tail of a model's backend log (``?lines=N``, default 50) as plain text."""
        name = request.path_params["name"]
        route = gateway.route(name)
        text = await gateway.logs(route.name if route else name, _count(request, "lines", 50))
        return Response(text, media_type="text/plain; charset=utf-8")

    @post("/api/down", guards=guards, status_code=200)
    async def down() -> dict[str, Any]:
        """Stop every managed backend, then the service itself (``modelplane down``)."""
        return await gateway.down()

    return [healthz, readyz, metrics, status, events, reconcile, load, unload, history, logs, down]


def _count(request: Request, name: str, default: int) -> int:
    text = request.query_params.get(name, str(default))
    if not text.isdigit():
        raise errors.bad_request(f"{name} must be a whole number, got {text!r}")
    return int(text)
