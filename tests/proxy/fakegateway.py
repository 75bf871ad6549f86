"""A :class:`proxy.gateway.Gateway` for the proxy's tests: each model is a real fake-backend
process, started on ``wake`` (the real gateway is the reconcile loop; this one only does what the
proxy relies on, and counts every call so tests can check the proxy's side of the contract).

All methods run on the proxy server's event loop; tests read the counters from their own thread
once the requests they made have finished.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from proxy.gateway import PRIORITIES, ApiKey, ModelRoute, Refused, RequestRecord, Unavailable
from tests.helpers.backend import FakeBackend, start_fake_backend


@dataclass(frozen=True)
class FakeModel:
    name: str
    backend_args: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    max_concurrency: int = 8
    priority: str = "normal"
    pinned: bool = False
    startup_timeout: float = 20.0
    endpoint: str | None = None  # served by something the test runs: always Ready there


class FakeGateway:
    def __init__(self, models: list[FakeModel], keys: list[ApiKey] | None = None) -> None:
        self.models = {m.name: m for m in models}
        self.aliases = {a: m.name for m in models for a in m.aliases}
        self.keys: list[ApiKey] = list(keys or [])
        self.backends: dict[str, FakeBackend] = {}
        self.failed: dict[str, str] = {}
        self._starting: dict[str, asyncio.Task[str]] = {}
        self.wake_calls: Counter[str] = Counter()
        self.starts: Counter[str] = Counter()
        self.begun: Counter[str] = Counter()
        self.ended: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.unbalanced: list[str] = []  # end_request without a begin_request
        self.failures: list[tuple[str, str]] = []
        self.timeouts: list[tuple[str, str]] = []
        self.records: list[RequestRecord] = []
        self.warm: list[tuple[str, float]] = []  # stay_warm calls (x_stay_warm)
        self.ready: tuple[bool, str] = (True, "first pass done")
        self.event_log: list[dict[str, Any]] = []
        self._subscribers: list[asyncio.Queue[dict[str, Any]]] = []
        self.reconciles = 0

    # --- routing --------------------------------------------------------------------------

    def _alive(self, name: str) -> FakeBackend | None:
        backend = self.backends.get(name)
        return backend if backend is not None and backend.process.poll() is None else None

    def phase(self, name: str) -> str:
        if self.models[name].endpoint:
            return "Ready"
        if name in self._starting:
            return "Starting"
        if name in self.failed:
            return "Failed"
        return "Ready" if name in self.backends else "Asleep"

    def _route(self, model: FakeModel) -> ModelRoute:
        backend = self.backends.get(model.name)
        phase = self.phase(model.name)
        return ModelRoute(
            name=model.name,
            aliases=model.aliases,
            phase=phase,
            priority=PRIORITIES[model.priority],
            max_concurrency=model.max_concurrency,
            startup_timeout=model.startup_timeout,
            endpoint=model.endpoint
            or (backend.url if backend is not None and phase == "Ready" else None),
            created=1700000000,
        )

    def routes(self) -> list[ModelRoute]:
        return [self._route(m) for m in self.models.values()]

    def route(self, name: str) -> ModelRoute | None:
        model = self.models.get(self.aliases.get(name, name))
        return self._route(model) if model is not None else None

    # --- wake: concurrent calls join one start --------------------------------------------

    async def wake(self, model: str) -> str:
        name = self.aliases.get(model, model)
        self.wake_calls[name] += 1
        if name not in self.models:
            raise Unavailable(f"unknown model {model}", status=404)
        if self.models[name].endpoint:
            return self.models[name].endpoint  # type: ignore[return-value]
        backend = self._alive(name)
        if backend is not None and name not in self.failed:
            return backend.url
        task = self._starting.get(name)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._start(name))
            self._starting[name] = task
            task.add_done_callback(lambda _: self._starting.pop(name, None))
        return await asyncio.shield(task)

    async def _start(self, name: str) -> str:
        spec = self.models[name]
        self.starts[name] += 1
        old = self.backends.pop(name, None)
        if old is not None:
            await asyncio.to_thread(old.stop, 1.0)
        self.emit({"model": name, "kind": "starting", "message": f"start {name}"})
        try:
            backend = await asyncio.to_thread(
                start_fake_backend,
                "--model-name",
                name,
                *spec.backend_args,
                timeout=spec.startup_timeout,
            )
        except (RuntimeError, TimeoutError) as exc:
            self.failed[name] = str(exc).splitlines()[0]
            message = f"model `{name}` failed to start: {self.failed[name]}"
            raise Unavailable(message, 503, 2.0) from None
        self.failed.pop(name, None)
        self.backends[name] = backend
        self.emit({"model": name, "kind": "ready", "message": f"{name} ready at {backend.url}"})
        return backend.url

    # --- accounting -----------------------------------------------------------------------

    def begin_request(self, model: str) -> None:
        self.begun[model] += 1
        self.in_flight[model] += 1

    def end_request(self, model: str) -> None:
        self.ended[model] += 1
        self.in_flight[model] -= 1
        if self.in_flight[model] < 0:
            self.unbalanced.append(model)

    def stay_warm(self, model: str, seconds: float) -> None:
        self.warm.append((model, seconds))

    def backend_failed(self, model: str, reason: str) -> None:
        self.failures.append((model, reason))
        self.failed[model] = reason

    def request_timed_out(self, model: str, message: str) -> None:
        self.timeouts.append((model, message))

    def record_request(self, record: RequestRecord) -> None:
        self.records.append(record)

    def api_keys(self) -> list[ApiKey]:
        return self.keys

    # --- admin ----------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        return self.ready

    async def status(self) -> dict[str, Any]:
        return {
            "models": [
                {"name": r.name, "phase": r.phase, "endpoint": r.endpoint} for r in self.routes()
            ],
            "gpus": [],
        }

    def emit(self, event: dict[str, Any]) -> None:
        event = {"time": time.time(), **event}
        self.event_log.append(event)
        for queue in self._subscribers:
            queue.put_nowait(event)

    async def events(self, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        chosen = [e for e in self.event_log if model is None or e.get("model") == model]
        return chosen[-limit:]

    async def follow_events(self) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._subscribers.append(queue)  # type: ignore[arg-type]
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.remove(queue)  # type: ignore[arg-type]

    def end_followers(self) -> None:
        """End every follow stream (as the real gateway does when modelplane stops)."""
        for queue in self._subscribers:
            queue.put_nowait(None)  # type: ignore[arg-type]

    @property
    def followers(self) -> int:
        return len(self._subscribers)

    async def reconcile(self) -> dict[str, Any]:
        self.reconciles += 1
        return {"pass": self.reconciles, "actions": []}

    async def load(self, model: str) -> None:
        await self.wake(model)

    async def unload(self, model: str) -> None:
        if self.models[model].pinned:
            raise Refused(f"model `{model}` is pinned: unpin it in its manifest to unload it")
        backend = self.backends.pop(model, None)
        if backend is not None:
            await asyncio.to_thread(backend.stop, 5.0)

    # --- test helpers ---------------------------------------------------------------------

    def close(self) -> None:
        """Stop every backend (from the test thread, after the server stopped)."""
        for backend in self.backends.values():
            backend.stop(grace=2.0)
        self.backends.clear()
