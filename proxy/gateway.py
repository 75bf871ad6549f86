"""The contract between the proxy and the reconciler.

The proxy knows HTTP, OpenAI shapes, queueing and forwarding; it knows nothing of manifests,
runtimes or plans. Everything it needs from the rest of modelplane goes through a
:class:`Gateway`, which the reconcile loop implements (``reconciler.service``). Tests may
implement it too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, NamedTuple, Protocol, get_args

#: The priority scale, highest first: a Model's ``spec.priority``, ``X-Priority``, eviction order.
Priority = Literal["urgent", "high", "normal", "low", "batch"]
#: The same names as numbers: higher is served first (and evicted last); batch is 0.
PRIORITIES: Mapping[str, int] = {
    name: rank for rank, name in enumerate(reversed(get_args(Priority)))
}


class Phase(StrEnum):
    """What a model is doing: the *phase* axis of status (docs/architecture.md). One list for
    the whole project: the reconciler sets it, ``/v1/models``, ``/api/status``, ``/metrics``,
    the CLI and the systemd status line show it."""

    DOWNLOADING = "Downloading"  # weights being fetched
    ASLEEP = "Asleep"  # weights ready, not loaded: a request wakes it
    STARTING = "Starting"  # a backend is starting (or waits for GPU memory being freed)
    READY = "Ready"  # a healthy backend serves it
    DRAINING = "Draining"  # being stopped: requests in flight finish first
    FAILED = "Failed"  # backing off after a failed start or a crash (reason, retry time)
    UNSCHEDULABLE = "Unschedulable"  # does not fit the GPUs (reason)
    UNKNOWN = "Unknown"  # its runtime cannot be listed (docker daemon down)


@dataclass(frozen=True)
class ModelRoute:
    """What the proxy needs to know about one servable model."""

    name: str
    aliases: tuple[str, ...] = ()
    phase: Phase = Phase.ASLEEP
    priority: int = PRIORITIES["normal"]
    max_concurrency: int = 8
    startup_timeout: float = 600.0
    request_timeout: float | None = None  # seconds to the first byte of an answer; then 504
    idle_timeout: float | None = None  # longest silence within an answer; then 504 / an event
    endpoint: str | None = None  # "http://127.0.0.1:PORT" while Ready
    created: int = 0  # unix time, for /v1/models
    labels: Mapping[str, str] = field(default_factory=dict)
    loading_as_reasoning: bool = False  # a waiting chat stream gets progress as reasoning_content
    node: str = ""  # the cluster node its backend runs on ("" = this box)


@dataclass(frozen=True)
class ApiKey:
    """A client key: only its sha256 is known; ``models`` are fnmatch globs it may reach."""

    name: str
    sha256: str
    models: tuple[str, ...] = ("*",)


class RequestRecord(NamedTuple):
    """One row of the request log, fields in the order of the log's columns. A plain tuple:
    thousands are made per second, and the gateway writes them to SQLite as they are."""

    time: float
    client: str
    model: str
    path: str
    status: int
    latency: float
    ttft: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Unavailable(Exception):
    """The model cannot serve now. The proxy answers ``status`` with ``Retry-After``."""

    def __init__(self, message: str, status: int = 503, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after


class Refused(Exception):
    """An admin request that is not allowed (e.g. unloading a pinned model): HTTP 409."""


class Gateway(Protocol):
    """Implemented by the reconcile loop; every method is called from the proxy's event loop."""

    def routes(self) -> list[ModelRoute]:
        """Every model modelplane knows (for ``/v1/models``), current phase included."""
        ...

    def route(self, name: str) -> ModelRoute | None:
        """The model called ``name`` or having it as an alias; ``None`` if unknown."""
        ...

    async def wake(self, model: str) -> str:
        """Return the endpoint of a ready backend, starting the model first if it is asleep.

        Concurrent calls for the same model join one start. Waits at most the model's
        ``startup_timeout``; raises :class:`Unavailable` when it cannot be placed, failed or did
        not become ready in time.
        """
        ...

    def begin_request(self, model: str) -> None:
        """A request for ``model`` is being forwarded (in flight: never unloaded or evicted)."""
        ...

    def end_request(self, model: str) -> None:
        """That request finished; the model's idle clock starts now."""
        ...

    def stay_warm(self, model: str, seconds: float) -> None:
        """A request asked (``x_stay_warm``) for ``model`` to stay loaded ``seconds`` after it
        ended; the gateway caps it (``Node.proxy.maxStayWarm``)."""
        ...

    def backend_failed(self, model: str, reason: str) -> None:
        """The backend broke during a request (connection refused, died mid-stream)."""
        ...

    def request_timed_out(self, model: str, message: str) -> None:
        """A request gave up on a slow backend (``requestTimeout``/``idleTimeout``): slow is
        not broken, the model keeps serving; the operator hears of it."""
        ...

    def record_request(self, record: RequestRecord) -> None:
        """Append to the request log (called once per request on the hot path: must not block
        or do more than keep the record; the gateway writes them in batches)."""
        ...

    def api_keys(self) -> list[ApiKey]:
        """Configured keys; empty means open access (modelplane then binds loopback only)."""
        ...

    # --- admin -------------------------------------------------------------------------------
    def readiness(self) -> tuple[bool, str]:
        """``/readyz``: (ready, reason). Not ready before the first pass or with a runtime down."""
        ...

    async def status(self) -> dict[str, Any]:
        """``/api/status``: models (phase, sync, gpus, endpoint, in flight, queued, idle for,
        last error) and GPUs."""
        ...

    async def events(self, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """The newest events, oldest first."""
        ...

    def follow_events(self) -> AsyncIterator[dict[str, Any]]:
        """New events as they are recorded (for ``/api/events?follow=1``)."""
        ...

    async def history(self, limit: int = 20) -> list[dict[str, Any]]:
        """Applied generations, oldest first, each with the models it changed."""
        ...

    async def logs(self, model: str, lines: int = 50) -> str:
        """The tail of a model's backend log (empty when there is none)."""
        ...

    def follow_logs(self, model: str, lines: int = 50) -> AsyncIterator[str]:
        """The tail of a model's backend log, then each new line (``?follow=1``)."""
        ...

    async def requests(
        self,
        model: str | None = None,
        client: str | None = None,
        status: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The request log, newest first (``/api/requests``); ``status`` 1-5 is a class."""
        ...

    async def down(self) -> dict[str, Any]:
        """Stop every managed backend, then stop serving (``modelplane down``)."""
        ...

    async def reconcile(self) -> dict[str, Any]:
        """Run a pass now (``POST /api/reconcile``); returns its summary."""
        ...

    async def load(self, model: str) -> None:
        """Start a model by hand and keep it warm as if it had been used now."""
        ...

    async def unload(self, model: str) -> None:
        """Stop a model by hand; raises :class:`Refused` for a pinned model."""
        ...
