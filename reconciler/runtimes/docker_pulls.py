"""Image pulls as events: when a pull starts, how far it got now and then, and how it ended.

The docker runtime reports a pull's progress about twice a second (:class:`PullProgress`); the
event log wants a few lines per pull, not hundreds, so progress is recorded at most every
``every`` seconds, while the start and the outcome always are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from reconciler.units import format_size

if TYPE_CHECKING:  # the docker SDK is imported only when the docker runtime is used
    from .docker import PullProgress

AddEvent = Callable[[str, str, str | None], Awaitable[object]]


def describe(progress: PullProgress) -> tuple[str, str]:
    """(event kind, message) for one progress report (pure)."""
    image = progress.image
    if progress.status == "done":
        size = f", {format_size(progress.bytes_total)}" if progress.bytes_total else ""
        return "Pulled", f"pulled image {image} ({progress.layers_total} layer(s){size})"
    if progress.status == "failed":
        return "PullFailed", progress.message or f"pulling image {image} failed"
    if progress.status == "using local image":
        return "PullFailed", f"{progress.message}; using the local copy of {image}"
    if not progress.layers_total:
        return "Pulling", f"pulling image {image}"
    done = f"{progress.layers_done}/{progress.layers_total} layers"
    if progress.bytes_total:
        done += f", {format_size(progress.bytes_done)} of {format_size(progress.bytes_total)}"
    return "Pulling", f"pulling image {image}: {done}"


class PullEvents:
    """The docker runtime's ``on_pull`` callback; called in the event loop, never blocks."""

    def __init__(
        self, add_event: AddEvent, every: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.add_event = add_event
        self.every = every
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}  # (model, image) → last progress event
        self._tasks: set[asyncio.Task[object]] = set()

    def __call__(self, progress: PullProgress) -> None:
        key = (progress.model, progress.image)
        now = self.clock()
        progress_only = progress.status == "pulling" and progress.layers_total > 0
        if progress_only and now - self._last.get(key, -self.every) < self.every:
            return
        if progress.status == "pulling":
            self._last[key] = now
        else:
            self._last.pop(key, None)
        kind, message = describe(progress)
        task = asyncio.get_running_loop().create_task(
            self.add_event(kind, message, progress.model or None)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
