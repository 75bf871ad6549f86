"""``Node.notify`` wired to the event log: which events reach the webhooks, and as which kind.

Every event modelplane records passes through :meth:`EventNotifications.on_event` (a listener of
the store). :func:`classify` maps it to one of the four notification kinds, or to nothing:

- ``Applied``: a new generation (with its commit and the models it changed);
- ``Failed``: a model's start failed (``Failed``) or its backend crashed (``Crashed``), and also
  what makes an apply fail for the whole box: invalid manifests (``Invalid``), a refused prune
  (``PruneRefused``), a pull that cannot fetch (``GitSyncFailed``), a runtime that cannot be
  reached (``RuntimeUnavailable``: the docker daemon is down);
- ``Unschedulable``: a model cannot be placed on the GPUs (sent when the reason changes);
- ``Recovered``: a model that had failed is ready again.

A model that keeps failing (crash, backoff, crash) is reported once per streak: the first failure
is sent, the next ones are not until it recovers or a new generation is applied. Delivery is the
:class:`~reconciler.notify.Notifier`'s: queued, in the background, with retries; nothing here
waits for a webhook.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Sequence
from typing import Any

from reconciler.manifests.schema import NotifyTarget
from reconciler.state.store import Event

from .webhooks import Notifier, WebhookTarget

log = logging.getLogger("modelplane.alerts")

BOX_FAILURES = ("Invalid", "PruneRefused", "GitSyncFailed", "RuntimeUnavailable")  # not one model


def classify(event: Event, failing: set[str]) -> tuple[str, dict[str, Any]] | None:
    """The notification for ``event`` (kind, payload), or None; updates the ``failing`` streaks."""
    payload: dict[str, Any] = {"model": event.model, "message": event.message, "event": event.kind}
    if event.kind == "Applied":
        failing.clear()  # a new generation: a model still failing after it is news again
        return "Applied", payload
    if event.kind in ("Failed", "Crashed") and event.model:
        if event.model in failing:
            return None
        failing.add(event.model)
        return "Failed", payload
    if event.kind in BOX_FAILURES or event.kind == "Failed":
        return "Failed", payload
    if event.kind == "Unschedulable":
        return "Unschedulable", payload
    if event.kind == "Recovered":
        failing.discard(event.model or "")
        return "Recovered", payload
    return None


class EventNotifications:
    """The webhooks of the Node manifest in force; reconfigured when ``Node.notify`` changes."""

    def __init__(self) -> None:
        self.notifier: Notifier | None = None
        self._config: tuple[tuple[str, tuple[str, ...]], ...] = ()
        self._node: str | None = None
        self._failing: set[str] = set()
        self._closing: set[asyncio.Task[None]] = set()

    def configure(self, targets: Sequence[NotifyTarget], node: str | None = None) -> None:
        """Use these targets from now on (a no-op when nothing changed)."""
        config = tuple((t.url, tuple(t.events)) for t in targets)
        node = node or socket.gethostname()
        if config == self._config and node == self._node:
            return
        old, self.notifier = self.notifier, None
        if old is not None:  # deliver what it holds, in the background
            task = asyncio.get_running_loop().create_task(old.aclose())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self._config, self._node = config, node
        if config:
            self.notifier = Notifier(
                [WebhookTarget(url, frozenset(events)) for url, events in config], node=node
            )

    def on_event(self, event: Event) -> None:
        """A store listener: never blocks, never raises."""
        if self.notifier is None:
            return
        try:
            found = classify(event, self._failing)
            if found is not None:
                self.notifier.notify(*found)
        except Exception:
            log.exception("notification for event %s failed", event.id)

    async def aclose(self, timeout: float = 3.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds (shutdown must not hang)."""
        if self.notifier is not None:
            await self.notifier.aclose(timeout)
            self.notifier = None
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
