"""Crash backoff: when to try a failing model again, and when to call it ``Failed`` (pure).

A model whose backend keeps dying must not be restarted in a tight loop, yet it must come back on
its own once the cause goes away. Each model's failures are counted; the next retry waits
exponentially longer (tenacity's ``wait_exponential``, capped); after ``failed_after`` failures the
model's phase is ``Failed``, still with a next retry time, and the reason and last log lines are
kept for ``status``. The count starts over when the model's spec changes (a new spec deserves a
fresh chance), when it ran longer than ``stable_after`` before crashing, or on :meth:`reset`.
A *permanent* failure (an image that is not present with ``imagePull: Never``, a bad
``extraArgs``) is ``Failed`` at once and not retried until the spec changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import tenacity


@dataclass(frozen=True)
class Failure:
    """What the backoff knows about one model's failures."""

    model: str
    spec_hash: str
    count: int
    last_at: float
    next_retry: float  # Unix time; math.inf when only a spec change can help
    reason: str
    log_tail: str = ""
    permanent: bool = False

    def failed(self, failed_after: int) -> bool:
        return self.permanent or self.count >= failed_after


def _delay(wait: tenacity.wait.wait_base, attempt: int) -> float:
    """Ask a tenacity wait strategy for the delay before retry number ``attempt``."""
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return float(wait(state))


class CrashBackoff:
    """Per-model failure counts and next retry times; the caller supplies ``now``."""

    def __init__(
        self,
        initial: float = 2.0,
        maximum: float = 300.0,
        failed_after: int = 5,
        stable_after: float = 600.0,
    ) -> None:
        self.wait = tenacity.wait_exponential(multiplier=initial, min=initial, max=maximum)
        self.failed_after = failed_after
        self.stable_after = stable_after
        self._failures: dict[str, Failure] = {}

    def record_failure(
        self,
        model: str,
        spec_hash: str,
        now: float,
        reason: str,
        log_tail: str = "",
        *,
        uptime: float | None = None,
        permanent: bool = False,
    ) -> Failure:
        """Count a failed start or a crash (``uptime``: how long it ran, if it ever did)."""
        previous = self._failures.get(model)
        fresh = (
            previous is None
            or previous.spec_hash != spec_hash
            or (uptime is not None and uptime >= self.stable_after)
        )
        count = 1 if fresh else previous.count + 1
        next_retry = math.inf if permanent else now + _delay(self.wait, count)
        failure = Failure(model, spec_hash, count, now, next_retry, reason, log_tail, permanent)
        self._failures[model] = failure
        return failure

    def get(self, model: str, spec_hash: str | None = None) -> Failure | None:
        """The model's failure record; None if it has none or its spec has changed since."""
        failure = self._failures.get(model)
        if failure is None or (spec_hash is not None and failure.spec_hash != spec_hash):
            return None
        return failure

    def may_start(self, model: str, spec_hash: str, now: float) -> bool:
        """May the model be (re)started now? Always yes for a spec that has not failed."""
        failure = self.get(model, spec_hash)
        return failure is None or now >= failure.next_retry

    def is_failed(self, model: str, spec_hash: str) -> bool:
        """Is the model's phase ``Failed`` (repeated or permanent failure of this spec)?"""
        failure = self.get(model, spec_hash)
        return failure is not None and failure.failed(self.failed_after)

    def retry_now(self, model: str, now: float) -> None:
        """Keep the count but allow a start at once (an explicit load by a user)."""
        failure = self._failures.get(model)
        if failure is not None:
            self._failures[model] = replace(failure, next_retry=now)

    def reset(self, model: str) -> None:
        """Forget the model's failures (it was removed from the manifests).

        Not on every successful start: a backend that becomes ready and then crashes would loop
        at the initial delay; ``uptime >= stable_after`` in :meth:`record_failure` covers that.
        """
        self._failures.pop(model, None)
