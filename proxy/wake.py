"""Waking models: one ``gateway.wake`` per model at a time, however many requests wait.

The gateway already joins concurrent wakes into one start; coalescing here as well means a cold
start is counted (and timed) once, and a waiter that gives up (client gone, timeout) never
cancels the wake the others are waiting for.
"""

from __future__ import annotations

import asyncio
import logging
import time

from proxy.gateway import Gateway, Phase
from proxy.metrics import ProxyMetrics

log = logging.getLogger("modelplane.proxy")


class Waker:
    def __init__(self, gateway: Gateway, metrics: ProxyMetrics) -> None:
        self._gateway = gateway
        self._metrics = metrics
        self._pending: dict[str, asyncio.Future[str]] = {}

    def pending(self, model: str) -> asyncio.Future[str]:
        """The wake of ``model`` in progress, started now if there is none. Its result is the
        endpoint; it raises what ``gateway.wake`` raises (:class:`Unavailable`)."""
        future = self._pending.get(model)
        if future is None:
            future = asyncio.ensure_future(self._wake(model))
            self._pending[model] = future
            future.add_done_callback(lambda done: self._forget(model, done))
        return future

    async def wake(self, model: str) -> str:
        """Wait for the shared wake; cancelling this waiter leaves the wake running."""
        return await asyncio.shield(self.pending(model))

    def _forget(self, model: str, future: asyncio.Future[str]) -> None:
        if self._pending.get(model) is future:
            del self._pending[model]
        if not future.cancelled():
            future.exception()  # retrieved: nobody waiting is not an "unhandled" error

    async def _wake(self, model: str) -> str:
        route = self._gateway.route(model)
        cold = route is None or route.phase != Phase.READY or not route.endpoint
        start = time.monotonic()
        try:
            endpoint = await self._gateway.wake(model)
        except Exception as exc:
            self._metrics.wake_failures.labels(model).inc()
            log.warning("wake of %s failed after %.1f s: %s", model, time.monotonic() - start, exc)
            raise
        if cold:
            took = time.monotonic() - start
            self._metrics.cold_start(model, took)
            log.info("model %s ready after %.1f s (cold start)", model, took)
        return endpoint
