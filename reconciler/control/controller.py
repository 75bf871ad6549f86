"""One reconcile pass, end to end: load manifests → desired; list runtimes → actual; plan; execute.

The CLI's ``plan``/``apply``/``status`` and the service's loop all go through a
:class:`Controller`, so a pass means the same thing everywhere.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from reconciler.gitops.sync import Revision
from reconciler.gitops.worktree import GitInfo, changes_between, git_info_async
from reconciler.manifests import manifest_set as manifest_sets
from reconciler.manifests.manifest_set import ManifestSet
from reconciler.manifests.schema import NodeSpec
from reconciler.planning.desired import Desired, build_desired
from reconciler.planning.outcome import Outcome
from reconciler.planning.planner import Action, Activity, PruneRefused, plan, unseen
from reconciler.runtimes import RuntimeSet
from reconciler.runtimes.base import Instance
from reconciler.runtimes.docker_pulls import PullEvents
from reconciler.state import paths
from reconciler.state.store import Override, Store
from reconciler.weights.gate import gate_downloads
from reconciler.weights.manager import ProgressListener, WeightsManager

from .executor import Executor
from .gpuplan import GpuState, converge, read_state, schedule_into
from .overrides import describe, ended, manifest_digests
from .status import ModelStatus, model_statuses


@dataclass
class PlanResult:
    manifests: ManifestSet
    desired: Desired
    actual: list[Instance]
    actions: list[Action] = field(default_factory=list)
    refused: str | None = None  # the prune guard's message
    unavailable: dict[str, str] = field(default_factory=dict)  # runtime → why it can't be listed
    weights_problems: dict[str, str] = field(default_factory=dict)  # model → why no weights
    gpus: GpuState = field(default_factory=GpuState)  # inventory, estimates, the schedule


@dataclass
class PassResult(PlanResult):
    outcomes: list[Outcome] = field(default_factory=list)
    generation: int = 0

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def ok(self) -> bool:
        return (
            not self.failures
            and not self.refused
            and not self.unavailable
            and not self.weights_problems
        )


class Controller:
    def __init__(self, manifest_dir: Path, store: Store, runtimes: RuntimeSet) -> None:
        # Absolute, so the paths remembered with the last valid documents name the same files
        # whichever folder the next modelplane runs from (a broken file's fallbacks match by path).
        self.manifest_dir = manifest_dir.absolute()
        self.store = store
        self.runtimes = runtimes
        runtimes.on_pull = PullEvents(store.add_event)  # image pulls show in the event log
        self.weights = WeightsManager(store)
        self.executor = Executor(runtimes, store, resolve_path=self.weights.resolved_path)
        self.state_dir = runtimes.state_dir
        # Pull mode (Node.git): the clone's manifests are read beside the directory's, and the
        # revision checked out there is what generations record.
        self.extra_dirs: list[Path] = []
        self.revision: Revision | None = None
        self.git: GitInfo | None = None  # where the current generation's manifests came from

    @classmethod
    async def open(cls, manifest_dir: Path, state_dir: Path | None = None) -> Controller:
        """Find the state directory (the Node manifest may name it) and open the database."""
        try:
            node = manifest_sets.load(manifest_dir).node
        except FileNotFoundError:
            node = NodeSpec()
        state_dir = state_dir or paths.state_dir(node)
        store = await Store.open(state_dir / "modelplane.db")
        return cls(manifest_dir, store, RuntimeSet(state_dir, node.docker_host))

    async def close(self) -> None:
        await self.store.close()

    async def __aenter__(self) -> Controller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def load(self, online: bool = True, persist: bool = True) -> tuple[ManifestSet, Desired]:
        """Manifests in force (falling back to last valid versions) and the desired state.

        Hub sources are resolved to commits (``online``: ask the hub, else the last known
        commits; ``persist``: remember them), so a moved branch is a new spec hash.
        Raises ``FileNotFoundError`` when the directory itself is missing.
        """
        manifests = manifest_sets.load(
            self.manifest_dir, await self.store.documents(), extra_roots=self.extra_dirs
        )
        self.weights.configure(manifests.node)
        revisions = await self.weights.resolve_all(manifests, online=online, persist=persist)
        return manifests, build_desired(manifests, revisions)

    async def observe(self, desired: Desired) -> tuple[list[Instance], dict[str, str]]:
        names = {"process", desired.node.runtime, *(m.runtime for m in desired.models.values())}
        return await self.runtimes.list(names)

    async def plan(
        self,
        activity: Mapping[str, Activity] | None = None,
        allow_empty: bool = False,
        now: float | None = None,
        online: bool = True,
        persist: bool = False,
    ) -> PlanResult:
        manifests, desired = await self.load(online=online, persist=persist)
        actual, unavailable = await self.observe(desired)
        result = PlanResult(manifests, desired, actual, unavailable=unavailable)
        activity = await self._activity(activity, manifests, desired)
        result.gpus = await read_state(desired, actual, activity, self.executor.resolve_path)
        try:
            planned = plan(desired, actual, now or time.time(), activity, allow_empty=allow_empty)
            blind = unseen(desired, unavailable)  # their runtime is down: what runs is unknown
            planned = [a for a in planned if a.model not in blind]
        except PruneRefused as exc:
            result.refused = str(exc)
        else:
            # no start before its weights are there; then where each start goes, and what must
            # be evicted first
            gated = gate_downloads(planned, desired, await self.weights.states(desired))
            result.weights_problems = gated.problems
            result.actions = schedule_into(result.gpus, gated.actions, desired, actual)
        return result

    async def apply(
        self,
        activity: Mapping[str, Activity] | None = None,
        allow_empty: bool = False,
        on_progress: ProgressListener | None = None,
    ) -> PassResult:
        planned = await self.plan(activity, allow_empty, persist=True)
        result = PassResult(**vars(planned))
        if not planned.refused:  # a refused (emptied) set must not wipe the last valid versions
            await self.store.replace_documents(i.stored() for i in planned.manifests.in_force())
        result.generation = await self._generation(planned)
        for name, problem in planned.weights_problems.items():
            await self.store.set_model_state(name, "Failed", problem)
        if result.refused:
            await self.store.add_event("PruneRefused", result.refused)
        else:  # (with nothing to do, it only forgets stale Unschedulable states)
            result.outcomes = await self._download_then_converge(
                planned, result.generation, on_progress, activity, allow_empty
            )
        outcome = "refused" if result.refused else "failed" if result.failures else "ok"
        await self.store.update_generation(result.generation, outcome, _summary(result))
        return result

    async def _download_then_converge(
        self,
        planned: PlanResult,
        generation: int,
        on_progress: ProgressListener | None,
        activity: Mapping[str, Activity] | None,
        allow_empty: bool,
    ) -> list[Outcome]:
        """Downloads first (at most ``Node.maxDownloads`` at once), then the rest of a plan
        made again: the starts that waited for their weights are in it now, placed on GPUs
        with estimates that read the downloaded files."""
        downloads = [a for a in planned.actions if a.kind == "download"]
        outcomes = list(
            await asyncio.gather(*(self.weights.download(a, on_progress) for a in downloads))
        )
        if any(o.ok for o in outcomes):
            planned = await self.plan(activity, allow_empty, online=False, persist=True)
        actions = [a for a in planned.actions if a.kind != "download"]
        live = await self._activity(activity, planned.manifests, planned.desired)
        return outcomes + await converge(
            self, planned.desired, actions, planned.gpus, live, generation
        )

    async def status(self, activity: Mapping[str, Activity] | None = None) -> list[ModelStatus]:
        manifests, desired = await self.load(online=False)
        actual, unavailable = await self.observe(desired)
        health = {}
        for inst in actual:
            if inst.state == "running":
                health[inst.model] = await self.runtimes.get(inst.runtime).healthy(inst)
        states = await self.store.model_states()
        downloading = {name for name, s in states.items() if s.phase == "Downloading"}
        return model_statuses(
            desired,
            actual,
            states,
            await self._activity(activity, manifests, desired),
            health,
            time.time(),
            unavailable,
            weights=await self.weights.info(desired, downloading, live=False),
            overrides={
                name: describe(o) for name, o in (await self.overrides(manifests, desired)).items()
            },
        )

    async def gpu_state(self, activity: Mapping[str, Activity] | None = None) -> GpuState:
        """The GPU inventory with the claims of the backends that run (``status``)."""
        manifests, desired = await self.load(online=False)
        actual, _ = await self.observe(desired)
        activity = await self._activity(activity, manifests, desired)
        return await read_state(desired, actual, activity, self.executor.resolve_path)

    async def _activity(
        self,
        activity: Mapping[str, Activity] | None,
        manifests: ManifestSet | None = None,
        desired: Desired | None = None,
    ) -> dict[str, Activity]:
        """Live activity from the proxy when it runs, else the idle clocks in the database
        (and the models loaded by hand, held until their manifest changes)."""
        if activity is not None:
            return dict(activity)
        found = {m: Activity(last_used=t) for m, t in (await self.store.last_used()).items()}
        if manifests is not None and desired is not None:
            for name in await self.overrides(manifests, desired):
                found[name] = replace(found.get(name, Activity()), held=True)
        return found

    async def overrides(self, manifests: ManifestSet, desired: Desired) -> dict[str, Override]:
        """The manual overrides still in force for these manifests (read-only: the service
        ends the others)."""
        found = await self.store.overrides()
        gone = ended(found, manifest_digests(manifests, desired))
        return {name: o for name, o in found.items() if name not in gone}

    async def _generation(self, planned: PlanResult) -> int:
        generation, _ = await self.record_generation(planned.manifests, planned.desired, "applying")
        return generation

    async def record_generation(
        self, manifests: ManifestSet, desired: Desired, outcome: str
    ) -> tuple[int, bool]:
        """The generation these manifests are, and whether it is new.

        A new generation starts when the documents in force change, or when the git commit
        they come from does (committing an edit that was applied dirty is a new generation).
        A document turning invalid changes no document in force (its last valid version stays),
        so a change in the errors counts too: that is what records the ``Invalid`` event.
        """
        last = await self.store.last_generation()
        git = self.git = await self.git_info()
        sha = git.sha if git else None
        errors = [str(e) for e in manifests.errors]
        if (
            last is not None
            and last.digest == manifests.digest
            and last.git_commit == sha
            and last.summary.get("errors", []) == errors
        ):
            return last.id, False
        models = {name: m.spec_hash for name, m in desired.models.items()}
        summary: dict[str, Any] = {"models": models, "errors": errors}
        if git is not None:
            summary["git"] = {"subject": git.subject, "dirtyFiles": list(git.dirty_files)}
            if self.revision is not None:
                summary["git"]["pulled"] = True
        generation = await self.store.add_generation(
            manifests.digest,
            outcome,
            summary,
            git_commit=sha,
            git_branch=git.branch if git else None,
            git_dirty=git.dirty if git else None,
        )
        before = last.summary.get("models", {}) if last else {}
        changes = changes_between(before, models)
        source = f" from {git.describe()}" if git else ""
        await self.store.add_event(
            "Applied", f"generation {generation}{source}: {changes.summary() or 'no model changes'}"
        )
        if errors:
            await self.store.add_event(
                "Invalid",
                f"{len(errors)} invalid document(s); last valid versions kept:\n"
                + "\n".join(errors),
            )
        return generation, True

    async def git_info(self) -> GitInfo | None:
        """Where the manifests come from: pull mode's revision, else the directory's work tree."""
        if self.revision is not None:
            rev = self.revision
            return GitInfo(rev.checkout, rev.sha, rev.branch, rev.subject, dirty=False)
        return await git_info_async(self.manifest_dir)


def _summary(result: PlanResult) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "models": {name: m.spec_hash for name, m in result.desired.models.items()},
        "errors": [str(e) for e in result.manifests.errors],
        "actions": [str(a) for a in result.actions],
    }
    if isinstance(result, PassResult):
        summary["failures"] = [f"{o.action}: {o.message}" for o in result.failures]
    if result.refused:
        summary["refused"] = result.refused
    return summary
