"""What a model is doing, as every view shows it: the engine's phase records and the one rule
that turns them, and what the runtimes show, into a :class:`PhaseState`.

The engine records a phase when it decides one (``Starting`` when it starts a model, ``Failed``
with the reason and the retry time, ``Unschedulable`` with why). ``Ready`` and ``Asleep`` need no
record: a healthy backend in the routing table is Ready, a model with no backend is Asleep.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.gateway import Phase
from reconciler.runtimes.base import Instance

# Phases remembered in the database (for status without a running service); Ready and Asleep
# are what the runtimes show anyway.
REMEMBERED = frozenset(
    {
        Phase.DOWNLOADING,
        Phase.STARTING,
        Phase.DRAINING,
        Phase.FAILED,
        Phase.UNSCHEDULABLE,
    }
)


@dataclass
class PhaseState:
    phase: Phase
    reason: str = ""
    retry_at: float | None = None  # unix time of the next try (Failed: backing off)
    since: float = 0.0  # unix time the phase began


def derive_phase(
    recorded: PhaseState | None,
    ready: bool,
    busy: bool,
    instance: Instance | None,
) -> PhaseState:
    """The phase users see (pure).

    ``recorded``: what the engine last recorded; ``ready``: a healthy backend serves the model;
    ``busy``: an action on it is under way (a stop, a restart); ``instance``: its managed
    backend as the runtime lists it, if any.
    """
    if ready and not busy:
        return recorded if recorded and recorded.phase == Phase.READY else PhaseState(Phase.READY)
    if recorded is not None:
        return recorded
    if instance is not None and instance.state == "running":
        return PhaseState(Phase.STARTING, "health check not answering yet")
    if instance is not None and instance.state == "exited":
        return PhaseState(Phase.FAILED, instance.exit_reason or "exited")
    return PhaseState(Phase.ASLEEP)
