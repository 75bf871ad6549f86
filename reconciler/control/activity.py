"""Who is using which model right now: requests in flight, idle clocks, explicit wishes.

The proxy reports each request's start and end; the planner reads a snapshot of this to decide
what may be unloaded (idle past ``stayWarm``, nothing in flight) and what must run. Idle time
counts from the end of the last request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from reconciler.planning.planner import Activity


class ActivityTracker:
    def __init__(self, last_used: Mapping[str, float] | None = None) -> None:
        self.in_flight: dict[str, int] = {}
        self.last_used: dict[str, float] = dict(last_used or {})
        self.wanted: set[str] = set()  # asked to run (wake, manual load) until it has started
        # Models loaded by hand (kept running until unloaded): the service points this at its
        # overrides, so there is one list of them.
        self.holds: Callable[[], Collection[str]] = frozenset
        self.dirty: set[str] = set()  # last_used values not yet written to the database

    @property
    def held(self) -> Collection[str]:
        return self.holds()

    def begin(self, model: str) -> None:
        self.in_flight[model] = self.in_flight.get(model, 0) + 1

    def end(self, model: str, now: float | None = None) -> int:
        """Returns how many requests are still in flight for ``model``."""
        left = max(0, self.in_flight.get(model, 0) - 1)
        if left:
            self.in_flight[model] = left
        else:
            self.in_flight.pop(model, None)
        self.last_used[model] = now if now is not None else time.time()
        self.dirty.add(model)
        return left

    def touch(self, model: str, now: float | None = None) -> None:
        """Count as used now (a manual load keeps the model warm for its stayWarm)."""
        self.last_used[model] = now if now is not None else time.time()
        self.dirty.add(model)

    def busy(self, model: str) -> bool:
        return self.in_flight.get(model, 0) > 0

    def snapshot(self) -> dict[str, Activity]:
        held = set(self.held)
        names = set(self.in_flight) | set(self.last_used) | self.wanted | held
        return {
            name: Activity(
                in_flight=self.in_flight.get(name, 0),
                last_used=self.last_used.get(name),
                wanted=name in self.wanted,
                held=name in held,
            )
            for name in names
        }

    def take_dirty(self) -> dict[str, float]:
        """``last_used`` of the models changed since the last call (for the database)."""
        changed = {m: self.last_used[m] for m in self.dirty if m in self.last_used}
        self.dirty.clear()
        return changed
