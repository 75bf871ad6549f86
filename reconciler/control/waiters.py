"""Requests waiting for a model to start: one start however many wait, and why a wake failed.

A wake (a request for a model that is not Ready) joins the model's waiter; the engine resolves
it with the endpoint when the backend is healthy, or fails it with one of the exceptions below,
which the service turns into the HTTP answer (502 or 503).
"""

from __future__ import annotations

import asyncio


class WakeFailed(Exception):
    """A start that a wake was waiting for failed (the backend's own fault: HTTP 502)."""


class WakeUnschedulable(Exception):
    """The model could not be placed on the GPUs for as long as a request may wait."""


class WeightsUnavailable(WakeFailed):
    """The model's weights cannot be had (revision unresolved, offline, download failed): 503."""


class StartWaiters:
    """One future per model being woken, shared by every request that waits for it."""

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Future[str]] = {}

    def join(self, name: str) -> asyncio.Future[str]:
        """The future that resolves to ``name``'s endpoint (created by the first caller)."""
        waiter = self._waiters.get(name)
        if waiter is None or waiter.done():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[name] = waiter
        return waiter

    def resolve(self, name: str, endpoint: str) -> bool:
        """``name`` is Ready at ``endpoint``; whether anybody was waiting for it."""
        waiter = self._waiters.pop(name, None)
        if waiter is None or waiter.done():
            return False
        waiter.set_result(endpoint)
        return True

    def fail(self, name: str, exc: Exception) -> None:
        waiter = self._waiters.pop(name, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
            waiter.exception()  # mark retrieved: a waiter may have timed out already

    def fail_all(self, exc: Exception) -> None:
        for name in list(self._waiters):
            self.fail(name, exc)
