"""What ``modelplane run`` tells systemd (``Type=notify``): READY, STATUS lines, STOPPING.

- ``READY=1`` once the proxy listens and the first reconcile pass has run (``serve`` calls
  :meth:`SystemdReporter.ready` when uvicorn has bound its socket; the lifespan that runs the
  first pass comes before that).
- ``STATUS=generation 3 (1a2b3c4d5e6f): 2 ready, 1 asleep, 0 failed`` whenever that line changes,
  at most once per ``throttle`` seconds (a pass or a phase change marks it; the line is only sent
  when its text differs).
- ``STOPPING=1`` when SIGTERM/SIGINT arrives (the drain begins).
- ``WATCHDOG=1`` is :meth:`SystemdNotifier.keepalive`, a task on the same event loop.

Without ``$NOTIFY_SOCKET`` every call is a no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Mapping

from reconciler.ops.systemd import SystemdNotifier

from .service import Service

SHOWN = ("Ready", "Asleep", "Failed")  # always in the line, even at 0


def summary_line(phases: Mapping[str, str], generation: int, commit: str | None) -> str:
    """``generation 3 (1a2b3c4d5e6f): 2 ready, 1 asleep, 0 failed, 1 starting``. Pure."""
    counts = Counter(phases.values())
    parts = [f"{counts.pop(p, 0)} {p.lower()}" for p in SHOWN]
    parts += [f"{n} {p.lower()}" for p, n in sorted(counts.items())]
    source = f" ({commit[:12]})" if commit else ""
    return f"generation {generation}{source}: {', '.join(parts)}"


class SystemdReporter:
    def __init__(self, notifier: SystemdNotifier, service: Service, throttle: float = 1.0) -> None:
        self.notifier = notifier
        self.service = service
        self.throttle = throttle
        self._changed = asyncio.Event()
        self._sent: str | None = None
        self._ready = False
        self._tasks: list[asyncio.Task[None]] = []
        if notifier.enabled:
            service.engine.on_change.append(self._changed.set)

    def summary(self) -> str:
        git = self.service.controller.git
        snapshot = self.service.snapshot_now()
        return summary_line(snapshot.phases(), snapshot.generation, git.sha if git else None)

    def start(self) -> None:
        """The watchdog pings (from now on: they extend the start timeout until READY)."""
        if self.notifier.enabled:
            self._tasks = [asyncio.create_task(self.notifier.keepalive(), name="sd watchdog")]

    def ready(self) -> None:
        """The proxy listens and the first pass has run."""
        if not self.notifier.enabled or self._ready:
            return
        self._ready = True
        self._sent = self.summary()
        self.notifier.ready(self._sent)
        self._tasks.append(asyncio.create_task(self._status_forever(), name="sd status"))

    def stopping(self) -> None:
        self.notifier.stopping("stopping: draining requests in flight")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _status_forever(self) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            text = self.summary()
            if text != self._sent:
                self._sent = text
                self.notifier.status(text)
            await asyncio.sleep(self.throttle)
