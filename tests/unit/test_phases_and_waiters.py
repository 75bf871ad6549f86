"""The engine's two small pure pieces: the rule that derives the phase users see, and the
waiters that let every request for a model share one start."""

from __future__ import annotations

import asyncio

import pytest

from proxy.gateway import Phase
from reconciler.control.phases import PhaseState, derive_phase
from reconciler.control.waiters import StartWaiters, WakeFailed
from reconciler.runtimes.base import Instance


def backend(state: str, exit_reason: str | None = None) -> Instance:
    return Instance("m", "process", "42", state, exit_reason=exit_reason)  # type: ignore[arg-type]


def test_ready_unless_an_action_is_under_way() -> None:
    assert derive_phase(None, ready=True, busy=False, instance=None).phase == Phase.READY
    draining = PhaseState(Phase.DRAINING, "stopping: removed from the manifests")
    assert derive_phase(draining, ready=True, busy=True, instance=None) is draining
    # a stale record (the start that led here) does not hide Ready
    starting = PhaseState(Phase.STARTING, "start")
    assert derive_phase(starting, ready=True, busy=False, instance=None).phase == Phase.READY


def test_a_recorded_phase_wins_over_what_the_runtime_shows() -> None:
    failed = PhaseState(Phase.FAILED, "exit code 1", retry_at=123.0)
    assert derive_phase(failed, ready=False, busy=False, instance=backend("running")) is failed


def test_without_a_record_the_backend_tells() -> None:
    starting = derive_phase(None, ready=False, busy=False, instance=backend("running"))
    assert (starting.phase, starting.reason) == (Phase.STARTING, "health check not answering yet")
    exited = derive_phase(None, False, False, backend("exited", "exit code 3: out of memory"))
    assert (exited.phase, exited.reason) == (Phase.FAILED, "exit code 3: out of memory")
    assert derive_phase(None, False, False, backend("exited")).reason == "exited"
    assert derive_phase(None, False, False, None).phase == Phase.ASLEEP


async def test_every_waiter_shares_one_start() -> None:
    waiters = StartWaiters()
    first, second = waiters.join("m"), waiters.join("m")
    assert first is second
    assert waiters.resolve("m", "http://127.0.0.1:9") is True
    assert await first == "http://127.0.0.1:9"
    assert waiters.resolve("m", "http://127.0.0.1:9") is False  # nobody waits any more
    assert waiters.join("m") is not first  # the next wake is a new start


async def test_a_failed_start_fails_its_waiters_and_only_theirs() -> None:
    waiters = StartWaiters()
    m, other = waiters.join("m"), waiters.join("other")
    waiters.fail("m", WakeFailed("exit code 1"))
    with pytest.raises(WakeFailed, match="exit code 1"):
        await m
    assert not other.done()
    waiters.fail_all(WakeFailed("shutting down"))
    with pytest.raises(WakeFailed, match="shutting down"):
        await asyncio.wait_for(other, 1)
    waiters.fail("m", WakeFailed("again"))  # nobody waits: nothing happens
