"""What became of one action: done, or failed with the reason (and whether retrying can help)."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.runtimes.base import Instance

from .planner import Action


@dataclass(frozen=True)
class Outcome:
    action: Action
    ok: bool
    message: str = ""
    instance: Instance | None = None
    permanent: bool = False  # a failure that only a spec change can mend
