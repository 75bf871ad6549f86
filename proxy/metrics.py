"""Prometheus metrics of one app, in the app's own registry (tests create many apps).

The per-request figures (requests, latency, time to first token, tokens) are plain tallies
updated once per request, after it finished (:mod:`proxy.tallies`); rare events (cold starts,
failures) are prometheus_client counters. Gauges that describe current state (queue depth, in
flight, model phase) are read at scrape time by a collector, so requests pay nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.gateway import ModelRoute, Phase
from proxy.queueing import QueueStats
from proxy.tallies import RequestTallies
from proxy.usage import Usage

PHASES = tuple(Phase)
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
        node = GaugeMetricFamily(
            "modelplane_model_node",
            "1 for the cluster node a model's backend runs on (the ray runtime)",
            labels=["model", "node"],
        )
        for route in routes:
            queue = stats.get(route.name) or QueueStats(0, 0)
            depth.add_metric([route.name], queue.queued)
            in_flight.add_metric([route.name], queue.in_flight)
            for name in (*PHASES, *(() if route.phase in PHASES else (route.phase,))):
                phase.add_metric([route.name, name], 1.0 if name == route.phase else 0.0)
            if route.node:
                node.add_metric([route.name, route.node], 1.0)
        yield depth
        yield in_flight
        yield phase
        yield node


class ProxyMetrics:
    def __init__(
        self,
        routes: Callable[[], list[ModelRoute]],
        queues: Callable[[], Mapping[str, QueueStats]],
    ) -> None:
        self.registry = registry = CollectorRegistry()
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
        self.tallies = RequestTallies(LATENCY_BUCKETS)
        registry.register(self.tallies)

    def observe(
        self, model: str, status: int, latency: float, ttft: float | None, usage: Usage | None
    ) -> None:
        """Once per OpenAI request, when it is over."""
        self.tallies.observe(model, status, latency, ttft, usage)

    def upstream_request(self, model: str, status: int) -> None:
        """Once per ``/upstream/`` request, when it is over."""
        self.tallies.upstream(model, status)

    def cold_start(self, model: str, seconds: float) -> None:
        self.cold_starts.labels(model).inc()
        self.cold_start_seconds.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
