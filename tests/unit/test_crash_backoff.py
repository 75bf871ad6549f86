"""Crash backoff: exponential and capped, Failed after N, fresh on a spec change."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from reconciler.runtimes.backoff import CrashBackoff


def crash(backoff: CrashBackoff, now: float, spec_hash: str = "h1", **kw):
    return backoff.record_failure("m", spec_hash, now, "exited with code 3", "tail", **kw)


def test_delays_double_up_to_the_cap_and_then_the_model_is_failed():
    backoff = CrashBackoff(initial=2, maximum=10, failed_after=4)

    delays = [crash(backoff, 100.0).next_retry - 100.0 for _ in range(5)]

    assert delays == [2, 4, 8, 10, 10]
    assert backoff.is_failed("m", "h1")
    failure = backoff.get("m")
    assert (failure.count, failure.reason, failure.log_tail) == (5, "exited with code 3", "tail")


def test_may_start_only_once_the_retry_time_has_come():
    backoff = CrashBackoff(initial=5)
    assert backoff.may_start("m", "h1", 0.0)

    crash(backoff, 100.0)

    assert not backoff.may_start("m", "h1", 104.9)
    assert backoff.may_start("m", "h1", 105.0)


def test_a_spec_change_starts_over():
    backoff = CrashBackoff(initial=1, failed_after=2)
    crash(backoff, 0.0)
    crash(backoff, 0.0)
    assert backoff.is_failed("m", "h1")

    assert backoff.may_start("m", "h2", 0.0) and not backoff.is_failed("m", "h2")
    assert crash(backoff, 10.0, "h2").count == 1


def test_a_crash_after_a_long_stable_run_counts_as_the_first():
    backoff = CrashBackoff(initial=1, stable_after=600)
    crash(backoff, 0.0)
    crash(backoff, 1.0, uptime=30)

    assert crash(backoff, 2000.0, uptime=900).count == 1


def test_a_permanent_failure_is_failed_at_once_and_never_retried_for_that_spec():
    backoff = CrashBackoff()

    failure = crash(backoff, 0.0, permanent=True)

    assert failure.next_retry == math.inf and backoff.is_failed("m", "h1")
    assert not backoff.may_start("m", "h1", 1e12)
    assert backoff.may_start("m", "h2", 0.0)


def test_retry_now_and_reset():
    backoff = CrashBackoff(initial=100)
    crash(backoff, 0.0)
    backoff.retry_now("m", 1.0)
    assert backoff.may_start("m", "h1", 1.0) and backoff.get("m").count == 1

    backoff.reset("m")
    assert backoff.get("m") is None


@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=30))
def test_delays_never_shrink_and_stay_within_bounds(times):
    backoff = CrashBackoff(initial=2, maximum=300)
    delays = [crash(backoff, now).next_retry - now for now in sorted(times)]

    assert all(2 <= d <= 300 for d in delays)
    assert delays == sorted(delays)
