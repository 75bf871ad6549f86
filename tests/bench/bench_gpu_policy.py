"""How long placement and eviction take on a big box: prints numbers, asserts nothing.

PYTHONPATH=. python tests/bench/bench_gpu_policy.py
"""

from __future__ import annotations

import random
import time

from reconciler.gpus.eviction import RunningModel, choose_victims
from reconciler.gpus.placement import ModelDemand, place
from reconciler.gpus.types import Claim, GpuInfo
from reconciler.units import GiB


def main() -> None:
    rng = random.Random(0)
    for n_gpus, n_models in [(2, 8), (8, 24), (8, 40)]:
        gpus = [GpuInfo(i, 80 * GiB, source="static") for i in range(n_gpus)]
        models = []
        for j in range(n_models):
            gpu = j % n_gpus
            models.append(
                RunningModel(
                    f"m{j}",
                    (Claim(f"m{j}", gpu, int(80 * GiB * n_gpus / n_models) - GiB),),
                    priority=rng.randint(0, 4),
                    last_used=rng.random(),
                )
            )
        claims = [c for m in models for c in m.claims]
        for label, demand in [
            ("place 30 GiB", ModelDemand("new", 30 * GiB)),
            ("place spread 200 GiB", ModelDemand("new", 200 * GiB, per_gpu=GiB)),
        ]:
            t = time.perf_counter()
            place(demand, gpus, claims)
            took = (time.perf_counter() - t) * 1e3
            print(f"{n_gpus} GPUs, {n_models} models: {label}: {took:.2f} ms")
        for size in (60, 150):
            demand = ModelDemand("new", size * GiB, priority=4)
            t = time.perf_counter()
            result = choose_victims(demand, gpus, models)
            took = (time.perf_counter() - t) * 1e3
            victims = getattr(result, "victims", None)
            print(
                f"{n_gpus} GPUs, {n_models} models: evict for {size} GiB: {took:.1f} ms, {victims}"
            )


if __name__ == "__main__":
    main()
