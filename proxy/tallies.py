"""The per-request metrics (requests, latency, time to first token, tokens) as plain numbers.

prometheus_client's counters and histograms take a lock and check their state on every update;
at thousands of requests a second that was a tenth of the proxy's CPU. Every update here happens
on the event loop, so a dict of ints is enough; :class:`RequestTallies` turns them into the
same metric families (names, labels, buckets) when ``/metrics`` is scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from proxy.usage import Usage


class _Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf) and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self, size: int) -> None:
        self.counts = [0] * size
        self.sum = 0.0


class _ModelTally:
    __slots__ = ("completion_tokens", "latency", "prompt_tokens", "statuses", "ttft", "upstream")

    def __init__(self, buckets: int) -> None:
        self.statuses: dict[int, int] = {}
        self.upstream: dict[int, int] = {}
        self.latency = _Histogram(buckets + 1)
        self.ttft = _Histogram(buckets + 1)
        self.prompt_tokens = 0
        self.completion_tokens = 0


class RequestTallies(Collector):
    """Register it in a registry; call :meth:`observe` / :meth:`upstream` once per request."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self._bounds = list(buckets)
        self._models: dict[str, _ModelTally] = {}

    def _tally(self, model: str) -> _ModelTally:
        tally = self._models.get(model)
        if tally is None:
            tally = self._models[model] = _ModelTally(len(self._bounds))
        return tally

    def observe(
        self, model: str, status: int, latency: float, ttft: float | None, usage: Usage | None
    ) -> None:
        tally = self._tally(model)
        statuses = tally.statuses
        statuses[status] = statuses.get(status, 0) + 1
        histogram = tally.latency
        histogram.counts[bisect_left(self._bounds, latency)] += 1
        histogram.sum += latency
        if ttft is not None:
            histogram = tally.ttft
            histogram.counts[bisect_left(self._bounds, ttft)] += 1
            histogram.sum += ttft
        if usage is not None:
            tally.prompt_tokens += usage.prompt_tokens or 0
            tally.completion_tokens += usage.completion_tokens or 0

    def upstream(self, model: str, status: int) -> None:
        upstream = self._tally(model).upstream
        upstream[status] = upstream.get(status, 0) + 1

    # --- scrape ---------------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        models = list(self._models.items())
        requests = CounterMetricFamily(
            "modelplane_requests",
            "OpenAI requests by model and HTTP status (499: the client went away; 502: the "
            "backend failed, also mid-stream)",
            labels=["model", "status"],
        )
        latency = HistogramMetricFamily(
            "modelplane_request_duration_seconds",
            "Time from request to the last byte of the reply",
            labels=["model"],
        )
        ttft = HistogramMetricFamily(
            "modelplane_time_to_first_token_seconds",
            "Time from request to the first byte of a streamed reply's body",
            labels=["model"],
        )
        tokens = CounterMetricFamily(
            "modelplane_tokens", "Tokens reported in replies' usage", labels=["model", "kind"]
        )
        upstream = CounterMetricFamily(
            "modelplane_upstream_requests",
            "Requests passed through /upstream/{model}/ by model and HTTP status",
            labels=["model", "status"],
        )
        for model, tally in models:
            for status, count in list(tally.statuses.items()):
                requests.add_metric([model, str(status)], count)
            for status, count in list(tally.upstream.items()):
                upstream.add_metric([model, str(status)], count)
            if tally.statuses:
                latency.add_metric([model], *self._buckets(tally.latency))
            if any(tally.ttft.counts):
                ttft.add_metric([model], *self._buckets(tally.ttft))
            if tally.prompt_tokens:
                tokens.add_metric([model, "prompt"], tally.prompt_tokens)
            if tally.completion_tokens:
                tokens.add_metric([model, "completion"], tally.completion_tokens)
        yield from (requests, latency, ttft, tokens, upstream)

    def _buckets(self, histogram: _Histogram) -> tuple[list[tuple[str, float]], float]:
        cumulative = 0
        buckets = []
        for bound, count in zip([*self._bounds, float("inf")], histogram.counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        return buckets, histogram.sum
