"""The docker daemon's event stream, narrowed to modelplane's containers, as an async iterator.

The periodic resync finds a dead container eventually; this stream lets the service react at
once. It yields only events of containers carrying ``modelplane.managed=true`` (the daemon filters
by label; each event is checked again here). When the daemon goes away the stream reconnects by
itself, with a capped backoff, asking for the events it missed (``since``), so a consumer simply
iterates until it stops::

    async with container_events("unix:///run/docker.sock") as events:
        async for event in events:
            ...  # event.model died: reconcile now
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import docker
import docker.errors
import requests.exceptions

from .base import MANAGED_LABEL, MODEL_LABEL

log = logging.getLogger(__name__)

DEFAULT_ACTIONS = ("die", "oom", "stop")


@dataclass(frozen=True)
class ContainerEvent:
    """One thing that happened to a managed container."""

    model: str
    action: str  # "die", "oom", "stop", ...
    container_id: str
    exit_code: int | None  # for "die"
    time: float  # Unix time, from the daemon


def parse_event(raw: dict) -> ContainerEvent | None:
    """A :class:`ContainerEvent` from the daemon's JSON, or None if it is not ours (pure)."""
    actor = raw.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    if raw.get("Type") != "container" or attributes.get(MANAGED_LABEL) != "true":
        return None
    code = attributes.get("exitCode")
    nanos = raw.get("timeNano")
    return ContainerEvent(
        model=attributes.get(MODEL_LABEL, ""),
        action=str(raw.get("Action") or raw.get("status") or ""),
        container_id=str(actor.get("ID") or raw.get("id") or ""),
        exit_code=int(code) if code is not None and str(code).lstrip("-").isdigit() else None,
        time=nanos / 1e9 if isinstance(nanos, int) else float(raw.get("time") or 0),
    )


class ContainerEvents:
    """Managed containers' events; iterate with ``async for``, end with :meth:`aclose`."""

    def __init__(
        self,
        base_url: str | None = None,
        actions: tuple[str, ...] = DEFAULT_ACTIONS,
        *,
        reconnect_initial: float = 0.5,
        reconnect_max: float = 10.0,
        on_connection: Callable[[bool], None] | None = None,
    ) -> None:
        """``on_connection(connected)`` is called (in the event loop) when the stream is
        subscribed and when it is lost (state changes only): a lost stream usually means the
        daemon went away, which the consumer wants to know at once, not at its next resync."""
        self.base_url = base_url
        self.on_connection = on_connection
        self.actions = actions
        self.reconnect_initial = reconnect_initial
        self.reconnect_max = reconnect_max
        self._queue: asyncio.Queue[ContainerEvent | None] = asyncio.Queue()  # None: closed
        self._closed = threading.Event()
        self._stream = None  # the SDK's CancellableStream, closed to wake the reader thread
        self._thread: threading.Thread | None = None
        self._connected = threading.Event()
        self._started_at = 0.0
        self._up: bool | None = None  # the last state reported to on_connection

    def _client(self) -> docker.DockerClient:
        if self.base_url:
            return docker.DockerClient(base_url=self.base_url, version="auto", timeout=30)
        return docker.from_env(version="auto", timeout=30)

    def _read(self, loop: asyncio.AbstractEventLoop) -> None:
        """The reader thread: follow the stream, reconnect with backoff until closed."""
        # from when the iterator started (events before the subscription are replayed), then
        # from just after the last event seen; "seconds.nanoseconds"
        since: str | None = f"{self._started_at:.9f}"
        delay = self.reconnect_initial
        filters = {
            "type": ["container"],
            "label": [f"{MANAGED_LABEL}=true"],
            "event": list(self.actions),
        }
        while not self._closed.is_set():
            client = None
            try:
                client = self._client()
                self._stream = client.events(decode=True, filters=filters, since=since)
                self._connected.set()
                self._notify(loop, True)
                delay = self.reconnect_initial
                for raw in self._stream:
                    event = parse_event(raw)
                    if event is not None:
                        nanos = raw.get("timeNano") or int(event.time * 1e9)
                        since = f"{(nanos + 1) // 10**9}.{(nanos + 1) % 10**9:09d}"
                        loop.call_soon_threadsafe(self._queue.put_nowait, event)
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                if not self._closed.is_set():
                    log.warning("docker event stream lost (%s); reconnecting in %.1fs", exc, delay)
            except Exception as exc:  # the stream's socket closed under us by aclose()
                if not self._closed.is_set():
                    log.warning("docker event stream failed: %s", exc)
            finally:
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close()
            if not self._closed.is_set():
                self._notify(loop, False)
            if self._closed.wait(delay):
                return
            delay = min(delay * 2, self.reconnect_max)

    def _notify(self, loop: asyncio.AbstractEventLoop, connected: bool) -> None:
        if self._up is connected:
            return
        self._up = connected
        if self.on_connection is not None:
            with contextlib.suppress(RuntimeError):  # the event loop is closing
                loop.call_soon_threadsafe(self.on_connection, connected)

    def start(self) -> ContainerEvents:
        if self._thread is None:
            self._started_at = time.time()
            loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._read, args=(loop,), name="docker-events", daemon=True
            )
            self._thread.start()
        return self

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Wait until the stream is subscribed (so no later event can be missed)."""
        await asyncio.wait_for(asyncio.to_thread(self._connected.wait, timeout), timeout + 1)

    def __aiter__(self) -> AsyncIterator[ContainerEvent]:
        return self

    async def __anext__(self) -> ContainerEvent:
        self.start()
        event = None if self._closed.is_set() else await self._queue.get()
        if event is None:
            self._queue.put_nowait(None)  # for any other waiting consumer
            raise StopAsyncIteration
        return event

    async def aclose(self) -> None:
        self._closed.set()
        self._queue.put_nowait(None)  # wakes a consumer waiting in __anext__
        stream = self._stream
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)

    async def __aenter__(self) -> ContainerEvents:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def container_events(
    base_url: str | None = None, actions: tuple[str, ...] = DEFAULT_ACTIONS
) -> ContainerEvents:
    """The managed containers' events on the daemon at ``base_url`` (``DOCKER_HOST`` if None)."""
    return ContainerEvents(base_url, actions)
