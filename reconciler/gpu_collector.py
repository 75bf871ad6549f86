"""GPU gauges for ``modelplane run``'s ``/metrics``, read from the loop at scrape time.

The reconcile loop already keeps the last GPU inventory and the VRAM each model claims; this
collector only renders them (:func:`reconciler.gpus.gpu_metric_families`), so a scrape costs no
NVML call.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from .gpus import gpu_metric_families
from .gputypes import Claim
from .loop import ReconcileLoop


def held_claims(loop: ReconcileLoop) -> list[Claim]:
    """Every claim of the models running or starting, flat (for the JSON and the gauges)."""
    return [claim for claims in loop.claims.values() for claim in claims]


class GpuCollector(Collector):
    def __init__(self, loop: ReconcileLoop) -> None:
        self._loop = loop

    def collect(self) -> Iterator[Metric]:
        yield from gpu_metric_families(self._loop.inventory, held_claims(self._loop))
