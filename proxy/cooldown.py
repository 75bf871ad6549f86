"""``x_cooldown``: a client that asks for it gets its requests spaced at least that long apart.

Kept per client (``x_client_id``, else its address), in memory: a request that comes too soon is
refused with 429 and the seconds left as ``Retry-After``. Clients not seen for an hour are
forgotten, so the table stays small.
"""

from __future__ import annotations

FORGET_AFTER = 3600.0


PRUNE_EVERY = 60.0


class ClientCooldowns:
    """Only clients that ask for a cooldown are kept (the proxy asks nothing of the others)."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._next_prune = 0.0

    def __len__(self) -> int:
        return len(self._last)

    def check(self, client: str, cooldown: float | None, now: float) -> float | None:
        """Seconds ``client`` must still wait (then nothing is recorded), or None: the request
        may go, and counts as this client's latest."""
        last = self._last.get(client)
        if cooldown and last is not None and now - last < cooldown:
            return cooldown - (now - last)
        self._last[client] = now
        if now >= self._next_prune:  # by time, not size: never a rebuild per request
            self._next_prune = now + PRUNE_EVERY
            self._last = {c: t for c, t in self._last.items() if now - t < FORGET_AFTER}
        return None
