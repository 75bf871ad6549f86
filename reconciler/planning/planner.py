"""The planner: desired vs actual → the actions that converge them, each with its cause. Pure.

``plan(desired, actual, now, activity)`` has no I/O and no clock of its own, so it is unit- and
property-tested directly. Rules, per model:

- an instance without the managed label is never touched;
- an instance no manifest wants is stopped (prune), unless that would stop every model because
  the manifest set is empty — then :class:`PruneRefused` is raised unless ``allow_empty``;
- an exited instance is restarted when the model must run (pinned or requested), else cleaned up;
- a running instance whose spec hash differs is recreated;
- an unpinned, idle model past its ``stayWarm`` with nothing in flight is unloaded;
- a pinned (or requested, or loaded-by-hand: ``held``) model that is not running is started;
- a suspended model is left exactly as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from reconciler.runtimes.base import Instance, NodeChoice
from reconciler.units import format_duration

from .desired import Desired, DesiredModel, changed_fields

# ``download`` is never planned here: reconciler.weights_plan adds it (weights before a start)
ActionKind = Literal["start", "stop", "recreate", "unload", "evict", "download"]


@dataclass(frozen=True)
class Placement:
    """Where a start goes: the GPUs (``()``: none), the VRAM it claims on each (``shares``, in
    bytes, one per GPU), the engine arguments that spread it over them (``--tensor-split``), and
    why. The GPU scheduler sets one on each start it places.

    The runtime sets ``CUDA_VISIBLE_DEVICES`` to :attr:`cuda_visible_devices` (with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``), so inside the backend the GPUs are 0..n-1 in this order,
    which is the order ``--tensor-split`` lists them in.
    """

    gpus: tuple[int, ...] = ()
    shares: tuple[int, ...] = ()
    args: tuple[str, ...] = ()
    reason: str = ""

    @classmethod
    def as_named(cls, gpus: Sequence[int], reason: str) -> Placement:
        """The GPUs a manifest names, as they are, claimed at 0 bytes: nothing checked or
        estimated what the model takes there."""
        return cls(tuple(gpus), (0,) * len(gpus), (), reason)

    @property
    def cuda_visible_devices(self) -> str:
        """``"0,2"``; ``""`` for no GPU, which hides every GPU from a CUDA build."""
        return ",".join(map(str, self.gpus))


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    model: str
    cause: str
    instance: Instance | None = None  # the instance stopped or replaced
    placement: Placement | None = None  # set by the GPU scheduler for starts
    node: NodeChoice | None = None  # the ray runtime: the cluster node placement chose

    def __str__(self) -> str:
        return f"{self.kind} {self.model} ({self.cause})"


@dataclass(frozen=True)
class Activity:
    """What the proxy knows about a model's use."""

    in_flight: int = 0
    last_used: float | None = None  # end of the last request
    wanted: bool = False  # a request (or a manual load) asks for it to run
    held: bool = False  # loaded by hand: kept running like a pinned model (a manual override)


class PruneRefused(Exception):
    """Applying would stop every model because the manifests are empty or unreadable."""


def plan(
    desired: Desired,
    actual: Sequence[Instance],
    now: float,
    activity: Mapping[str, Activity] | None = None,
    *,
    allow_empty: bool = False,
) -> list[Action]:
    activity = activity or {}
    managed: dict[str, list[Instance]] = {}
    for inst in actual:
        if inst.managed:
            managed.setdefault(inst.model, []).append(inst)

    actions: list[Action] = []
    for name in sorted(set(desired.models) | set(managed)):
        model = desired.models.get(name)
        instances = sorted(managed.get(name, []), key=lambda i: (i.state != "running", i.ident))
        use = activity.get(name, Activity())
        if model is not None and model.spec.suspend:
            continue
        if model is None:
            actions += [Action("stop", name, "removed from manifests", i) for i in instances]
            continue
        current, extras = (instances[0], instances[1:]) if instances else (None, [])
        actions += [Action("stop", name, "duplicate instance", i) for i in extras]
        action = _plan_model(model, current, now, use)
        if action:
            actions.append(action)

    _guard_prune(desired, actions, allow_empty)
    return actions


def unseen(desired: Desired, unavailable: Mapping[str, str]) -> set[str]:
    """Models whose runtime could not be listed (docker daemon down): what runs is unknown, so
    no action may touch them (a start would race a backend that may still run)."""
    return {name for name, model in desired.models.items() if model.runtime in unavailable}


def _plan_model(
    model: DesiredModel, current: Instance | None, now: float, use: Activity
) -> Action | None:
    must_run = model.pinned or use.held or use.wanted or use.in_flight > 0
    why = "pinned" if model.pinned else "loaded by hand" if use.held else "requested"
    if current is None:
        return Action("start", model.name, f"{why}, not running") if must_run else None
    if current.state == "exited":
        reason = current.exit_reason or "exited"
        if must_run:
            return Action("start", model.name, f"{why}, {reason}", current)
        return Action("stop", model.name, f"clean up: {reason}", current)
    # Unload before recreate: recreating a backend that the next pass unloads wastes a load.
    if not must_run:
        idle_since = use.last_used if use.last_used is not None else current.started_at
        idle = now - idle_since
        if idle >= model.spec.stay_warm:
            return Action(
                "unload",
                model.name,
                f"idle {format_duration(idle)} > stayWarm {format_duration(model.spec.stay_warm)}"
                if model.spec.stay_warm
                else "stayWarm 0: unloaded right after use",
                current,
            )
    if current.spec_hash != model.spec_hash:
        fields = changed_fields(current.spec, model.effective)
        detail = f": {', '.join(fields)}" if fields else ""
        return Action("recreate", model.name, f"spec changed{detail}", current)
    return None


def _guard_prune(desired: Desired, actions: list[Action], allow_empty: bool) -> None:
    pruned = [a for a in actions if a.kind == "stop" and a.cause == "removed from manifests"]
    if pruned and not desired.models and not allow_empty:
        names = ", ".join(sorted({a.model for a in pruned}))
        raise PruneRefused(
            f"refusing to stop every model ({names}): the manifest set has no models "
            "(empty or unreadable directory?). Pass --allow-empty to stop them anyway."
        )
