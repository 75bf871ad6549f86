"""Queue policy (pure) and the slot mechanism (asyncio, no sockets)."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.gateway import PRIORITIES
from proxy.queueing import (
    ModelQueue,
    QueueFull,
    QueueTimeout,
    admission,
    parse_priority,
    resolve_priority,
    suggest_retry_after,
    waiter_order,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("urgent", 4), ("HIGH", 3), (" normal ", 2), ("low", 1), ("batch", 0), (7, 7), ("-1", -1)],
)
def test_parse_priority_accepts_names_and_integers(value: object, expected: int) -> None:
    assert parse_priority(value) == expected


@pytest.mark.parametrize("value", ["asap", "", None, True, 1.5, [1], {"p": 1}])
def test_parse_priority_rejects_anything_else_naming_the_forms(value: object) -> None:
    with pytest.raises(ValueError, match="urgent, high, normal, low, batch, or an integer"):
        parse_priority(value)


def test_header_beats_body_beats_model() -> None:
    assert resolve_priority("urgent", "batch", 2) == 4
    assert resolve_priority(None, "batch", 2) == 0
    assert resolve_priority(None, None, 3) == 3


def test_admission() -> None:
    assert admission(in_flight=0, max_concurrency=1, queued=0, max_queue=5) == "run"
    assert admission(in_flight=1, max_concurrency=1, queued=0, max_queue=5) == "wait"
    # A free slot does not let a newcomer overtake someone already waiting.
    assert admission(in_flight=0, max_concurrency=2, queued=1, max_queue=5) == "wait"
    assert admission(in_flight=1, max_concurrency=1, queued=5, max_queue=5) == "reject"
    assert admission(in_flight=1, max_concurrency=1, queued=0, max_queue=0) == "reject"
    assert admission(in_flight=0, max_concurrency=0, queued=0, max_queue=0) == "run"  # >= 1


@given(st.lists(st.tuples(st.sampled_from(list(PRIORITIES.values())), st.integers(0, 10**6))))
def test_waiter_order_is_priority_then_arrival(waiters: list[tuple[int, int]]) -> None:
    ordered = sorted(waiters, key=lambda w: waiter_order(*w))
    assert ordered == sorted(waiters, key=lambda w: (-w[0], w[1]))


def test_retry_after_grows_with_the_queue_and_is_bounded() -> None:
    assert suggest_retry_after(0, 1, 0.01) == 1  # at least a second
    assert suggest_retry_after(9, 2, 2.0) == 10  # (9 + 1) / 2 rounds of 2 s
    assert suggest_retry_after(10_000, 1, 30.0) == 60


async def test_slots_go_to_the_best_waiter() -> None:
    queue = ModelQueue()
    await queue.acquire(2, max_concurrency=1, max_queue=10, timeout=5)
    served: list[str] = []

    async def waiter(name: str, priority: int) -> None:
        await queue.acquire(priority, 1, 10, 5)
        served.append(name)
        await asyncio.sleep(0)
        queue.release(1)

    tasks = []
    for name, priority in [("low", 1), ("urgent", 4), ("normal-a", 2), ("normal-b", 2)]:
        tasks.append(asyncio.create_task(waiter(name, priority)))
        await asyncio.sleep(0)
    assert (queue.in_flight, queue.queued) == (1, 4)
    queue.release(1)
    await asyncio.gather(*tasks)
    assert served == ["urgent", "normal-a", "normal-b", "low"]
    assert queue.idle


async def test_try_acquire_takes_a_free_slot_but_never_overtakes_a_waiter() -> None:
    queue = ModelQueue()
    assert queue.try_acquire(1) and queue.in_flight == 1
    assert not queue.try_acquire(1)  # no free slot
    waiter = asyncio.ensure_future(queue.acquire(PRIORITIES["normal"], 1, 10, 5.0))
    await asyncio.sleep(0)
    assert queue.queued == 1
    assert not queue.try_acquire(2)  # a slot is free under a raised limit, but someone waits
    queue.release(1)  # the freed slot goes to the waiter
    await waiter
    assert (queue.in_flight, queue.queued) == (1, 0)


async def test_full_queue_raises_with_retry_after() -> None:
    queue = ModelQueue()
    await queue.acquire(2, 1, max_queue=1, timeout=5)
    waiting = asyncio.create_task(queue.acquire(2, 1, max_queue=1, timeout=5))
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as caught:
        await queue.acquire(2, 1, max_queue=1, timeout=5)
    assert caught.value.queued == 1 and caught.value.retry_after >= 1
    queue.release(1)
    await waiting
    queue.release(1)
    assert queue.idle


async def test_wait_bound_raises_and_leaves_the_queue() -> None:
    queue = ModelQueue()
    await queue.acquire(2, 1, 10, 5)
    with pytest.raises(QueueTimeout) as caught:
        await queue.acquire(2, 1, 10, timeout=0.05)
    assert caught.value.waited >= 0.05
    assert queue.queued == 0
    queue.release(1)
    assert queue.idle


async def test_a_cancelled_waiter_leaves_and_the_slot_goes_to_the_next() -> None:
    queue = ModelQueue()
    await queue.acquire(2, 1, 10, 5)
    first = asyncio.create_task(queue.acquire(3, 1, 10, 5))
    second = asyncio.create_task(queue.acquire(2, 1, 10, 5))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0)
    assert queue.queued == 1
    queue.release(1)
    await second
    assert (queue.in_flight, queue.queued) == (1, 0)
    queue.release(1)
    assert queue.idle


async def test_a_slot_granted_as_the_waiter_is_cancelled_is_passed_on() -> None:
    queue = ModelQueue()
    await queue.acquire(2, 1, 10, 5)
    leaving = asyncio.create_task(queue.acquire(3, 1, 10, 5))
    staying = asyncio.create_task(queue.acquire(2, 1, 10, 5))
    await asyncio.sleep(0)
    queue.release(1)  # grants `leaving` its slot...
    leaving.cancel()  # ...but it is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await leaving
    await staying  # the slot went on to the next waiter
    assert (queue.in_flight, queue.queued) == (1, 0)
    queue.release(1)
    assert queue.idle


async def test_raising_the_limit_admits_more_waiters() -> None:
    queue = ModelQueue()
    await queue.acquire(2, 1, 10, 5)
    waiters = [asyncio.create_task(queue.acquire(2, 1, 10, 5)) for _ in range(3)]
    await asyncio.sleep(0)
    queue.release(max_concurrency=3)  # the manifest now says 3
    await asyncio.gather(*waiters)
    assert (queue.in_flight, queue.queued) == (3, 0)
