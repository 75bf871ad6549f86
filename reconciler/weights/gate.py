"""Downloads in the plan: no start before the weights are there and verified. Pure.

:func:`reconciler.planner.plan` decides what must run without looking at the disk. This step,
run on its result before GPU scheduling, holds back every ``start``/``recreate`` of a
Hugging Face model whose files are not complete and verified in the cache, and plans a
``download`` for it instead; it also plans downloads ahead of need: a pinned model's, and an
unpinned one's when ``source.prefetch`` is true (the default), so a first request does not wait
for a multi-GB transfer. A model whose revision could not be resolved gets no download, only a
problem (its reason), and a model backing off after a failed download gets nothing until its
retry time. Stops, unloads and evictions pass through untouched, and path sources are never held.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field

from reconciler.planning.desired import Desired
from reconciler.planning.planner import Action
from reconciler.units import format_size


@dataclass(frozen=True)
class WeightsState:
    """What a pass knows about one hub model's weights (gathered by :mod:`.downloads`)."""

    repo: str
    commit: str | None  # None: never resolved
    ready: bool  # every file present with its size, and hashed since it last changed
    missing_files: int = 0
    missing_bytes: int = 0  # to come over the network (or from another repo's identical blob)
    problem: str | None = None  # the revision cannot be resolved, and nothing is cached

    def work(self) -> str:
        """What a download of it does, for the action's cause."""
        where = f"{self.repo}@{(self.commit or '?')[:12]}"
        if self.missing_files == 0:
            return f"verify {where} before it starts"
        plural = "" if self.missing_files == 1 else "s"
        return (
            f"fetch {self.missing_files} file{plural}, {format_size(self.missing_bytes)},"
            f" of {where}"
        )


@dataclass(frozen=True)
class WeightsInfo:
    """What ``status`` shows about a model's weights."""

    revision: str | None = None  # the resolved commit
    size: int | None = None  # bytes of the selected files
    quantization: str | None = None  # from the GGUF header (Q4_K_M, F16…)
    done: int | None = None  # a download under way: bytes on disk so far
    total: int | None = None


@dataclass
class Gated:
    actions: list[Action] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # wanted, but cannot be downloaded


def gate_downloads(
    actions: Sequence[Action],
    desired: Desired,
    weights: Mapping[str, WeightsState],
    downloading: Set[str] = frozenset(),
    blocked: Set[str] = frozenset(),
) -> Gated:
    """``weights``: hub models only; ``downloading``: downloads under way; ``blocked``: models
    backing off after a failed download (no new download until their retry time)."""
    gated = Gated()
    needs: dict[str, str] = {}  # model -> why it needs its weights now
    for action in actions:
        state = weights.get(action.model)
        if action.kind in ("start", "recreate") and state is not None and not state.ready:
            needs[action.model] = action.cause
        else:
            gated.actions.append(action)
    for name, model in sorted(desired.models.items()):
        state = weights.get(name)
        if state is None or state.ready or name in needs or model.spec.suspend:
            continue
        if model.pinned:
            needs[name] = "pinned"
        elif model.spec.source.prefetch:
            needs[name] = "prefetch"
    for name, why in sorted(needs.items()):
        state = weights[name]
        if state.problem is not None:
            gated.problems[name] = state.problem
        elif name not in downloading and name not in blocked:
            gated.actions.append(Action("download", name, f"{why}; {state.work()}"))
    return gated
