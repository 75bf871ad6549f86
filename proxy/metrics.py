"""Prometheus metrics of one app, in the app's own registry (tests create many apps).

Counters and histograms are updated once per request, after it finished. Gauges that describe
current state (queue depth, in flight, model phase) are read at scrape time by a collector,
so requests pay nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.gateway import ModelRoute
from proxy.queueing import QueueStats
from proxy.usage import Usage

PHASES = (
    "Ready",
    "Asleep",
    "Starting",
    "Downloading",
    "Draining",
    "Failed",
    "Unschedulable",
    "Stale",
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
COLD_START_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


class _StateCollector(Collector):
    def __init__(
        self,
        routes: Callable[[], list[ModelRoute]],
        queues: Callable[[], Mapping[str, QueueStats]],
    ) -> None:
        self._routes = routes
        self._queues = queues

    def collect(self) -> Iterator[Metric]:
        routes = self._routes()
        stats = self._queues()
        depth = GaugeMetricFamily(
            "modelplane_queue_depth", "Requests waiting for a slot", labels=["model"]
        )
        in_flight = GaugeMetricFamily(
            "modelplane_in_flight", "Requests being forwarded (holding a slot)", labels=["model"]
        )
        phase = GaugeMetricFamily(
            "modelplane_model_phase", "1 for the model's current phase", labels=["model", "phase"]
        )
        for route in routes:
            queue = stats.get(route.name) or QueueStats(0, 0)
            depth.add_metric([route.name], queue.queued)
            in_flight.add_metric([route.name], queue.in_flight)
            for name in (*PHASES, *(() if route.phase in PHASES else (route.phase,))):
                phase.add_metric([route.name, name], 1.0 if name == route.phase else 0.0)
        yield depth
        yield in_flight
        yield phase


class _RequestChildren(NamedTuple):
    """The metric children one (model, status) updates per request."""

    requests: Counter
    latency: Histogram
    ttft: Histogram
    prompt_tokens: Counter
    completion_tokens: Counter


class ProxyMetrics:
    def __init__(
        self,
        routes: Callable[[], list[ModelRoute]],
        queues: Callable[[], Mapping[str, QueueStats]],
    ) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "modelplane_requests",
            "OpenAI requests by model and HTTP status (499: the client went away; 502: the "
            "backend failed, also mid-stream)",
            ["model", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "modelplane_request_duration_seconds",
            "Time from request to the last byte of the reply",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "modelplane_time_to_first_token_seconds",
            "Time from request to the first byte of a streamed reply's body",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.tokens = Counter(
            "modelplane_tokens",
            "Tokens reported in replies' usage",
            ["model", "kind"],
            registry=registry,
        )
        self.upstream_requests = Counter(
            "modelplane_upstream_requests",
            "Requests passed through /upstream/{model}/ by model and HTTP status",
            ["model", "status"],
            registry=registry,
        )
        self.cold_starts = Counter(
            "modelplane_cold_starts",
            "Wakes that had to wait for a model to become ready",
            ["model"],
            registry=registry,
        )
        self.cold_start_seconds = Histogram(
            "modelplane_cold_start_duration_seconds",
            "How long requests waited for a model to become ready",
            ["model"],
            buckets=COLD_START_BUCKETS,
            registry=registry,
        )
        self.wake_failures = Counter(
            "modelplane_wake_failures",
            "Wakes that ended with the model unavailable",
            ["model"],
            registry=registry,
        )
        self.backend_failures = Counter(
            "modelplane_backend_failures",
            "Backends that failed during a request (refused, died mid-stream)",
            ["model"],
            registry=registry,
        )
        registry.register(_StateCollector(routes, queues))
        # Label lookups cost more than the updates: each (model, status) resolves them once.
        self._children: dict[tuple[str, int], _RequestChildren] = {}
        self._upstream_children: dict[tuple[str, int], Counter] = {}

    def observe(
        self,
        model: str,
        status: int,
        latency: float,
        ttft: float | None,
        usage: Usage | None,
    ) -> None:
        children = self._children.get((model, status))
        if children is None:
            children = self._children[(model, status)] = _RequestChildren(
                self.requests.labels(model, str(status)),
                self.latency.labels(model),
                self.ttft.labels(model),
                self.tokens.labels(model, "prompt"),
                self.tokens.labels(model, "completion"),
            )
        children.requests.inc()
        children.latency.observe(latency)
        if ttft is not None:
            children.ttft.observe(ttft)
        if usage is not None:
            if usage.prompt_tokens:
                children.prompt_tokens.inc(usage.prompt_tokens)
            if usage.completion_tokens:
                children.completion_tokens.inc(usage.completion_tokens)

    def upstream_request(self, model: str, status: int) -> None:
        child = self._upstream_children.get((model, status))
        if child is None:
            child = self._upstream_children[(model, status)] = self.upstream_requests.labels(
                model, str(status)
            )
        child.inc()

    def cold_start(self, model: str, seconds: float) -> None:
        self.cold_starts.labels(model).inc()
        self.cold_start_seconds.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
