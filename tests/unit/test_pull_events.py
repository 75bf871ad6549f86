"""Image pull progress → a few events per pull."""

from __future__ import annotations

import asyncio

from reconciler.runtimes.docker import PullProgress
from reconciler.runtimes.docker_pulls import PullEvents, describe

IMAGE = "vllm/vllm-openai:v0.6.3"


def test_describe_says_what_happened():
    gib = 2**30
    assert describe(PullProgress("m", IMAGE, "pulling")) == ("Pulling", f"pulling image {IMAGE}")
    assert describe(PullProgress("m", IMAGE, "pulling", 2, 5, gib, 4 * gib)) == (
        "Pulling",
        f"pulling image {IMAGE}: 2/5 layers, 1.0 GiB of 4.0 GiB",
    )
    assert describe(PullProgress("m", IMAGE, "done", 5, 5, 4 * gib, 4 * gib)) == (
        "Pulled",
        f"pulled image {IMAGE} (5 layer(s), 4.0 GiB)",
    )
    failed = PullProgress("m", IMAGE, "failed", message=f"pulling image {IMAGE} failed: 404")
    assert describe(failed) == ("PullFailed", f"pulling image {IMAGE} failed: 404")
    local = PullProgress("m", IMAGE, "using local image", message="pulling failed: timeout")
    assert describe(local) == (
        "PullFailed",
        f"pulling failed: timeout; using the local copy of {IMAGE}",
    )


async def test_progress_is_recorded_at_most_every_interval_start_and_end_always():
    recorded: list[tuple[str, str, str | None]] = []
    clock = [100.0]

    async def add_event(kind: str, message: str, model: str | None) -> None:
        recorded.append((kind, message, model))

    events = PullEvents(add_event, every=10.0, clock=lambda: clock[0])
    events(PullProgress("m", IMAGE, "pulling"))
    for step in range(1, 30):  # 15 s of reports, two a second
        clock[0] += 0.5
        events(PullProgress("m", IMAGE, "pulling", 0, 3, step, 30))
    events(PullProgress("m", IMAGE, "done", 3, 3, 30, 30))
    await asyncio.sleep(0)

    assert [kind for kind, _, _ in recorded] == ["Pulling", "Pulling", "Pulled"]
    assert recorded[1][1] == f"pulling image {IMAGE}: 0/3 layers, 20 B of 30 B"
    assert {model for _, _, model in recorded} == {"m"}
