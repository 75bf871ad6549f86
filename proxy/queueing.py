"""Per-model concurrency slots with a bounded priority queue.

Policy (pure, unit-tested): how a request's priority is chosen, whether it runs now, waits or
is turned away, in which order waiters are served, and what ``Retry-After`` to suggest.
Mechanism: :class:`ModelQueue` holds the in-flight count and a heap of waiting futures; a freed
slot is handed straight to the best waiter, so a newcomer never overtakes someone queued.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from proxy.gateway import PRIORITIES, ModelRoute

Admission = Literal["run", "wait", "reject"]


# --- policy ---------------------------------------------------------------------------------------


def parse_priority(value: object) -> int:
    """A priority from a header or body field: a name (``urgent``…``batch``) or an integer.

    Higher is served first. Raises :class:`ValueError` with the accepted forms otherwise.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in PRIORITIES:
            return PRIORITIES[text]
        try:
            return int(text)
        except ValueError:
            pass
    names = ", ".join(sorted(PRIORITIES, key=PRIORITIES.__getitem__, reverse=True))
    raise ValueError(f"invalid priority {value!r}: expected one of {names}, or an integer")


def resolve_priority(header: str | None, body_field: object, default: int) -> int:
    """The ``X-Priority`` header wins over the ``x_priority`` body field, which wins over the
    model's own priority."""
    if header is not None:
        return parse_priority(header)
    if body_field is not None:
        return parse_priority(body_field)
    return default


def admission(in_flight: int, max_concurrency: int, queued: int, max_queue: int) -> Admission:
    """Run now only if a slot is free *and* nobody waits (no overtaking); else wait unless the
    queue is full."""
    if in_flight < max(max_concurrency, 1) and queued == 0:
        return "run"
    if queued >= max_queue:
        return "reject"
    return "wait"


def waiter_order(priority: int, arrival: int) -> tuple[int, int]:
    """Heap key: highest priority first, first come first served within a priority."""
    return (-priority, arrival)


def suggest_retry_after(
    queued: int, max_concurrency: int, mean_service: float, floor: float = 1.0, cap: float = 60.0
) -> int:
    """Seconds until a slot is likely free: the queue ahead drained at the observed rate."""
    rounds = (queued + 1) / max(max_concurrency, 1)
    return int(min(cap, max(floor, math.ceil(rounds * max(mean_service, 0.0)))))


def ewma(previous: float | None, sample: float, weight: float = 0.2) -> float:
    """Exponentially weighted mean of service times (for Retry-After)."""
    return sample if previous is None else previous + weight * (sample - previous)


# --- mechanism ------------------------------------------------------------------------------------


class QueueFull(Exception):
    def __init__(self, queued: int, retry_after: int) -> None:
        super().__init__(f"{queued} requests already waiting")
        self.queued = queued
        self.retry_after = retry_after


class QueueTimeout(Exception):
    def __init__(self, waited: float, retry_after: int) -> None:
        super().__init__(f"no slot after {waited:.1f} s")
        self.waited = waited
        self.retry_after = retry_after


@dataclass(frozen=True)
class QueueStats:
    in_flight: int
    queued: int


class ModelQueue:
    """Slots of one model. ``max_concurrency`` is passed on every call: manifests may change it."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.queued = 0
        self.mean_service: float | None = None
        self._heap: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    def try_acquire(self, max_concurrency: int) -> bool:
        """Take a slot if one is free and nobody waits (no overtaking); never waits."""
        if admission(self.in_flight, max_concurrency, self.queued, 0) == "run":
            self.in_flight += 1
            return True
        return False

    async def acquire(
        self, priority: int, max_concurrency: int, max_queue: int, timeout: float
    ) -> float:
        """Take a slot, waiting up to ``timeout``; returns the seconds waited.

        Raises :class:`QueueFull` or :class:`QueueTimeout`. On cancellation nothing leaks: a
        waiter leaves the queue, and a slot handed over in the same instant is passed on.
        """
        decision = admission(self.in_flight, max_concurrency, self.queued, max_queue)
        if decision == "run":
            self.in_flight += 1
            return 0.0
        if decision == "reject":
            raise QueueFull(self.queued, self.retry_after(max_concurrency))
        start = time.monotonic()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._heap, (*waiter_order(priority, next(self._arrivals)), future))
        self.queued += 1
        try:
            async with asyncio.timeout(timeout):
                await future
        except BaseException as exc:
            if future.done() and not future.cancelled():
                self.release(max_concurrency)  # granted as we were leaving: pass it on
            else:
                future.cancel()  # stays in the heap; _grant skips it
                self.queued -= 1
            if isinstance(exc, TimeoutError):
                waited = time.monotonic() - start
                raise QueueTimeout(waited, self.retry_after(max_concurrency)) from None
            raise
        return time.monotonic() - start

    def release(self, max_concurrency: int, service_time: float | None = None) -> None:
        """Give a slot back; the best waiter gets it (or more, if the limit was raised)."""
        if service_time is not None:
            self.mean_service = ewma(self.mean_service, service_time)
        self.in_flight -= 1
        while self._heap and self.in_flight < max(max_concurrency, 1):
            *_, future = heapq.heappop(self._heap)
            if future.cancelled():
                continue
            self.queued -= 1
            self.in_flight += 1
            future.set_result(None)

    def retry_after(self, max_concurrency: int) -> int:
        return suggest_retry_after(self.queued, max_concurrency, self.mean_service or 1.0)

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and self.queued == 0


def queue_json(routes: Sequence[ModelRoute], stats: Mapping[str, QueueStats]) -> dict[str, object]:
    """``GET /v1/queue`` (as Model Boss serves it): each model's waiting and in-flight requests
    and its concurrency, with the totals."""
    models = {}
    for route in routes:
        now = stats.get(route.name) or QueueStats(0, 0)
        models[route.name] = {
            "queued": now.queued,
            "inFlight": now.in_flight,
            "maxConcurrency": route.max_concurrency,
            "phase": str(route.phase),
        }
    return {
        "queued": sum(m["queued"] for m in models.values()),
        "inFlight": sum(m["inFlight"] for m in models.values()),
        "models": models,
    }


class Queues:
    """All models' queues, created on first use."""

    def __init__(self) -> None:
        self._queues: dict[str, ModelQueue] = {}

    def get(self, model: str) -> ModelQueue:
        queue = self._queues.get(model)
        if queue is None:
            queue = self._queues[model] = ModelQueue()
        return queue

    def stats(self) -> Mapping[str, QueueStats]:
        return {name: QueueStats(q.in_flight, q.queued) for name, q in self._queues.items()}
