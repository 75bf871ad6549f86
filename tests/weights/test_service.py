"""The async API: downloads in threads, at most N at once, one download per resolution."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from reconciler.weights import HubSettings, MirrorServer, Progress, Weights

from .conftest import gets
from .hubgen import HubRepos, safetensors_bytes


async def test_concurrent_requests_share_one_download(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    repos.commit("org/m", {"model.safetensors": safetensors_bytes(50_000)})
    weights = Weights(cache, settings)
    resolution = await weights.resolve("org/m", "main")
    loop_thread = threading.get_ident()
    seen: list[tuple[int, Progress]] = []

    def listener(p: Progress) -> None:
        seen.append((threading.get_ident(), p))

    first, second = await asyncio.gather(
        weights.ensure(resolution, listener), weights.ensure(resolution)
    )

    assert first is second
    assert len(gets(hub, "model.safetensors")) == 1
    assert seen and {ident for ident, _ in seen} == {loop_thread}
    assert seen[-1][1].done == resolution.total_size
    assert weights.progress(resolution) is None  # nothing under way any more


async def test_max_downloads_bounds_concurrency(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    for seed, name in enumerate(("org/a", "org/b")):
        repos.commit(name, {"m.safetensors": safetensors_bytes(100, seed=seed)})
    release = threading.Event()
    started: list[str] = []

    def measure(path: Path) -> int:  # called once per download, inside its slot
        started.append("x")
        release.wait(timeout=30)
        return 2**40

    weights = Weights(cache, settings, max_downloads=1, measure=measure)
    a = await weights.resolve("org/a")
    b = await weights.resolve("org/b")
    tasks = [asyncio.create_task(weights.ensure(r)) for r in (a, b)]
    while not started:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # the second download would have started by now if allowed
    assert len(started) == 1
    release.set()
    results = await asyncio.gather(*tasks)
    assert len(started) == 2
    assert [r.downloaded for r in results] == [("m.safetensors",), ("m.safetensors",)]


async def test_gc_and_metadata_through_the_service(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos, gguf_bytes: bytes
) -> None:
    repos.commit("org/g", {"m-q4_k_m.gguf": gguf_bytes})
    weights = Weights(cache, settings)
    result = await weights.ensure(await weights.resolve("org/g", "main", ["*.gguf"]))

    meta = await weights.gguf_metadata(result.model_path)
    plan = await weights.gc([("org/g", "main")])

    assert meta["architecture"] == "llama"
    assert plan.candidates == () and plan.kept == (("org/g", result.resolution.commit),)
