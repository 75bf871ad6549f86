"""Webhook notifications (``Node.notify``): a failed apply reaches the team's chat.

:meth:`Notifier.notify` never blocks and never raises for delivery problems: it puts the message
on each interested target's own bounded queue and returns. One asyncio task per target posts the
queue in order, with retries and exponential backoff (tenacity) on connection errors, timeouts,
429 and 5xx. A webhook that is down for long fills its queue; the oldest message is then dropped
(with a log line), so memory stays bounded and the newest news gets through once it is back.
Targets are independent: a slow one does not delay the others.

The body is JSON::

    {"event": "Failed", "time": "2025-01-01T12:00:00Z", "node": "gpu-box-1",
     "text": "modelplane@gpu-box-1: Failed qwen-7b: start timed out", "data": {...payload...}}

``text`` makes it readable as-is by Slack/Mattermost-style incoming webhooks.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

log = logging.getLogger(__name__)

EVENT_KINDS = ("Failed", "Unschedulable", "Recovered", "Applied")


@dataclass(frozen=True)
class WebhookTarget:
    """One ``Node.notify`` entry; an empty ``events`` means every kind."""

    url: str
    events: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = set(self.events) - set(EVENT_KINDS)
        if unknown:
            raise ValueError(
                f"notify {display_url(self.url)}: unknown event kind(s) {sorted(unknown)}; "
                f"expected some of {list(EVENT_KINDS)}"
            )

    def wants(self, kind: str) -> bool:
        return not self.events or kind in self.events


@dataclass
class DeliveryStats:
    """Per target, since start: for ``status`` and tests."""

    delivered: int = 0
    failed: int = 0  # gave up after the retries (or a 4xx that retrying cannot fix)
    dropped: int = 0  # oldest messages discarded because the queue was full
    last_error: str | None = None


def display_url(url: str) -> str:
    """``https://hooks.slack.com/…``: webhook paths are secrets, logs get the host only."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/…"


def message_text(kind: str, payload: Mapping[str, Any], node: str | None) -> str:
    """One human line for chat: ``modelplane@node: Failed model: message``."""
    text = f"modelplane{'@' + node if node else ''}: {kind}"
    if payload.get("model"):
        text += f" {payload['model']}"
    if payload.get("message"):
        text += f": {payload['message']}"
    return text


class _Retryable(Exception):
    """A response worth retrying (429, 5xx)."""


class _Rejected(Exception):
    """A 4xx response: retrying the same body cannot help."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, httpx.TransportError | _Retryable)


@dataclass
class _Channel:
    target: WebhookTarget
    queue: collections.deque[dict[str, Any]] = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stats: DeliveryStats = field(default_factory=DeliveryStats)
    task: asyncio.Task[None] | None = None


class Notifier:
    """Posts events to webhooks in the background; call :meth:`notify` from the event loop."""

    def __init__(
        self,
        targets: Iterable[WebhookTarget],
        *,
        node: str | None = None,
        max_queue: int = 100,
        timeout: float = 10.0,
        attempts: int = 6,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        """Up to ``attempts`` tries per message, waiting ``backoff * 2**n`` seconds (at most
        ``backoff_max``) between them; ``timeout`` bounds each HTTP request."""
        self.node = node
        self.max_queue = max_queue
        self.attempts = attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._channels = [_Channel(t) for t in targets]
        # trust_env: webhooks leave the box, through the environment's proxy where there is one
        self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=True, trust_env=True)
        self._closing = False

    def stats(self) -> dict[str, DeliveryStats]:
        """Delivery counters by target URL."""
        return {ch.target.url: ch.stats for ch in self._channels}

    def notify(self, kind: str, payload: Mapping[str, Any]) -> int:
        """Queue ``kind`` for every target that wants it; returns how many. Never blocks."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {kind!r}; expected one of {list(EVENT_KINDS)}")
        if self._closing:
            log.warning("notifier closed: %s event not sent", kind)
            return 0
        body = {
            "event": kind,
            "time": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "node": self.node,
            "text": message_text(kind, payload, self.node),
            "data": dict(payload),
        }
        queued = 0
        for ch in self._channels:
            if not ch.target.wants(kind):
                continue
            if len(ch.queue) >= self.max_queue:
                ch.queue.popleft()
                ch.stats.dropped += 1
                if ch.stats.dropped & (ch.stats.dropped - 1) == 0:  # 1, 2, 4, 8...: no flood
                    log.warning(
                        "webhook %s is behind (%d queued): dropped the oldest message "
                        "(%d dropped so far)",
                        display_url(ch.target.url),
                        self.max_queue,
                        ch.stats.dropped,
                    )
            ch.queue.append(body)
            ch.wake.set()
            if ch.task is None:
                ch.task = asyncio.get_running_loop().create_task(
                    self._run(ch), name=f"modelplane-webhook-{display_url(ch.target.url)}"
                )
            queued += 1
        return queued

    async def aclose(self, timeout: float = 5.0) -> None:
        """Deliver what is queued for up to ``timeout`` seconds, then give up and close."""
        self._closing = True
        tasks = [ch.task for ch in self._channels if ch.task is not None]
        for ch in self._channels:
            ch.wake.set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for ch in self._channels:
            if ch.queue:
                log.warning(
                    "webhook %s: %d message(s) not delivered before shutdown",
                    display_url(ch.target.url),
                    len(ch.queue),
                )
        await self._client.aclose()

    async def __aenter__(self) -> Notifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self, ch: _Channel) -> None:
        while True:
            if not ch.queue:
                if self._closing:
                    return
                ch.wake.clear()
                await ch.wake.wait()
                continue
            await self._deliver(ch, ch.queue.popleft())

    async def _deliver(self, ch: _Channel, body: dict[str, Any]) -> None:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff, max=self.backoff_max),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    response = await self._client.post(ch.target.url, json=body)
                    if response.status_code == 429 or response.status_code >= 500:
                        raise _Retryable(f"HTTP {response.status_code}")
                    if response.status_code >= 400:  # (the URL stays out of the message)
                        raise _Rejected(f"HTTP {response.status_code}")
        except (httpx.HTTPError, _Retryable, _Rejected) as exc:
            ch.stats.failed += 1
            ch.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "webhook %s: %s event not delivered: %s",
                display_url(ch.target.url),
                body["event"],
                ch.stats.last_error,
            )
            return
        ch.stats.delivered += 1
