"""The reconcile engine: one pass, the same for ``run``, ``apply``, ``plan`` and ``status``.

A pass observes (manifests in force, what the runtimes run, the GPUs), plans (the pure
:func:`~reconciler.planning.planner.plan`), gates starts on their weights (downloads first),
schedules starts on the GPUs (evictions first, or ``Unschedulable``), and hands each action to a
task of its own. Starting a model can take minutes, so it never holds up the pass, other models'
actions, or requests to models that are ready. A model with an action under way is *busy*: later
passes leave it alone until that action ends, and its end asks for the next pass.

Who drives the engine:

- ``modelplane run``: :class:`~reconciler.control.loop.ReconcileLoop` runs a pass on each trigger
  (manifest change, resync, wake, stay-warm expiry, the end of an action) for as long as it runs;
- ``modelplane apply``: :meth:`Engine.apply` runs passes until nothing is left to do (every action
  ended; starts that waited for evictions placed or found unschedulable);
- ``modelplane plan`` and an offline ``status``: a *dry run* (:meth:`Engine.plan`) observes and
  plans without changing anything, not even the database.

What a model is doing is the engine's :attr:`phases` (plus :attr:`ready`): the one state model
that :mod:`reconciler.control.snapshot` turns into what every view shows. Phases are also written
to the database, so that ``modelplane status`` without a running service shows the last ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.gateway import Phase
from reconciler.gpus.cluster import Cluster, schedule_everywhere, where_models_run
from reconciler.gpus.estimates import estimate_all, missing
from reconciler.gpus.inventory import Inventory, read_inventory
from reconciler.gpus.scheduler import Schedule, holders, instance_claims, pins_problem
from reconciler.gpus.types import Claim
from reconciler.gpus.vram import Estimate
from reconciler.manifests.loader import ManifestError
from reconciler.manifests.manifest_set import ManifestSet
from reconciler.planning.desired import Desired, build_desired
from reconciler.planning.outcome import Outcome
from reconciler.planning.planner import Action, PruneRefused, plan, unseen
from reconciler.runtimes.backoff import CrashBackoff
from reconciler.runtimes.base import Instance, RuntimeUnavailable
from reconciler.weights.gate import WeightsInfo, gate_downloads
from reconciler.weights.manager import ProgressListener

from .activity import ActivityTracker
from .controller import Controller
from .overrides import Overrides, manifest_digests
from .phases import REMEMBERED, PhaseState, derive_phase
from .waiters import StartWaiters, WakeFailed, WakeUnschedulable, WeightsUnavailable

log = logging.getLogger("modelplane.engine")

SETTLE = 10.0  # seconds a start waits for evicted models' memory to show free in NVML
STARTS = ("start", "recreate")
STOPS = ("stop", "unload", "evict", "recreate")
MAX_APPLY_PASSES = 100  # apply gives up on a plan that keeps changing (it never should)


@dataclass
class PassReport:
    """What one pass decided: the actions it runs (or would run: a dry run), and the starts
    it holds back (waiting for evictions to free GPU memory, or unschedulable)."""

    actions: list[Action] = field(default_factory=list)
    deferred: list[Action] = field(default_factory=list)
    schedule: Schedule = field(default_factory=Schedule)
    refused: str | None = None  # the prune guard's message


@dataclass
class ApplyResult:
    """What ``modelplane apply`` did: every action's outcome, and what kept it from converging."""

    manifests: ManifestSet
    desired: Desired
    generation: int
    outcomes: list[Outcome]
    refused: str | None
    unavailable: dict[str, str]
    weights_problems: dict[str, str]
    unschedulable: list[tuple[Action, str]]  # starts that fit nowhere, and why
    pins: str | None

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def ok(self) -> bool:
        return not (
            self.failures
            or self.refused
            or self.unavailable
            or self.weights_problems
            or self.unschedulable
        )


class Engine:
    def __init__(
        self,
        controller: Controller,
        activity: ActivityTracker | None = None,
        *,
        allow_empty: bool = False,
        drain_timeout: float = 30.0,
        dry_run: bool = False,
        online: bool = True,
    ) -> None:
        self.controller = controller
        self.activity = activity or ActivityTracker()
        self.allow_empty = allow_empty
        self.drain_timeout = drain_timeout
        self.dry_run = dry_run  # observe and plan only: no action, no write
        self.online = online  # ask the hub to resolve revisions (else the last known commits)
        self.manifests: ManifestSet | None = None
        self.desired: Desired | None = None
        self.generation = 0
        self.load_error: str | None = None  # the manifest directory cannot be read
        self.emptied: str | None = None  # no Model in the directory: the last set is kept (why)
        self.actual: list[Instance] = []
        self.unavailable: dict[str, str] = {}  # runtime → why it cannot be listed
        self.ready: dict[str, str] = {}  # model → endpoint of a healthy backend
        self.broken: set[str] = set()  # taken out of ready by the proxy: did it crash?
        self.phases: dict[str, PhaseState] = {}
        self.busy: dict[str, asyncio.Task[None]] = {}
        self.downloads: dict[str, asyncio.Task[None]] = {}  # in the background, beside `busy`
        self.weights_problems: dict[str, str] = {}  # wanted, but no weights to be had: why
        self.weights_info: dict[str, WeightsInfo] = {}  # revision, size, quantisation
        self.backoff = CrashBackoff()
        self.inventory = Inventory()
        self.estimates: dict[str, Estimate | str] = {}
        self.claims: dict[str, tuple[Claim, ...]] = {}  # held by backends running or starting
        self.pins: str | None = None  # why the pinned models cannot all fit, if they cannot
        self.waiting_gpu: dict[str, str] = {}  # model → why its start waits for VRAM
        self.evicting: set[str] = set()  # models being evicted now (draining or stopping)
        self.unschedulable_since: dict[str, float] = {}
        self.settle_until = 0.0
        self.unschedulable_wait = 300.0  # Node.proxy.queueTimeout
        self.passes = 0
        self.last_pass_at = 0.0  # the ``now`` of the last pass's plan
        self.outcomes: list[Outcome] = []  # every action's outcome, in the order they ended
        self.on_change: list[Callable[[], None]] = []  # after each pass and phase change
        self.on_progress: ProgressListener | None = None  # download progress (apply's bars)
        # Asks for another pass soon (the loop's trigger): an action ended, a wake wants a start.
        self.request_pass: Callable[[], None] = lambda: None
        self.overrides = Overrides(controller.store)  # models loaded by hand (held)
        self.activity.holds = lambda: self.overrides.held
        self.reload = True  # re-read the manifests on the next pass
        self._download_failed: dict[str, str] = {}  # model → spec hash whose download failed
        self._resolved_at = 0.0
        self._failing: dict[str, str] = {}  # failed since last Ready (why): next Ready "Recovered"
        self._writes: set[asyncio.Task[object]] = set()
        self._waiters = StartWaiters()
        self._placed: dict[str, tuple[Claim, ...]] = {}
        self._placed_nodes: dict[str, str] = {}  # Ray starts: model -> the node placed on
        self.cluster = Cluster()  # the Ray cluster's nodes (Node.ray), read each pass
        # a Ray actor exited or the cluster connection dropped: look now, not at the resync
        controller.runtimes.on_change.append(lambda: self.request_pass())
        self._pass_lock = asyncio.Lock()
        self._refused: str | None = None
        self._first_pass = asyncio.Event()
        self._restored: dict[str, PhaseState] = {}  # offline: the phases the database keeps
        self._info_task: asyncio.Task[None] | None = None

    # --- the CLI's entry points ---------------------------------------------------------------

    @classmethod
    async def offline(
        cls, controller: Controller, *, allow_empty: bool = False, online: bool = True
    ) -> Engine:
        """An engine for one CLI command: idle clocks, loads by hand and the last phases come
        from the database (a running ``modelplane run`` keeps them there)."""
        activity = ActivityTracker(await controller.store.last_used())
        engine = cls(controller, activity, allow_empty=allow_empty, online=online)
        await engine.overrides.restore()
        for name, state in (await controller.store.model_states()).items():
            if state.phase in (Phase.FAILED, Phase.UNSCHEDULABLE):  # (the others: a service
                # that is gone was at it)
                engine._restored[name] = PhaseState(
                    Phase(state.phase), state.reason or "", state.retry_at, state.since
                )
        return engine

    async def plan(self) -> PassReport:
        """What a pass would do now, changing nothing (``modelplane plan``, offline status)."""
        self.dry_run = True
        return await self.pass_once()

    async def apply(self) -> ApplyResult:
        """Passes until nothing is left to do (``modelplane apply``).

        Every action runs to its end; downloads come first (starts wait for their weights); a
        start that waits for evicted models' memory is placed once it shows free. What cannot be
        done now (a start backing off after it failed, a model that does not fit) ends it: the
        result says why."""
        self.outcomes = []
        for name, state in list(self._restored.items()):
            if state.phase == Phase.UNSCHEDULABLE:  # apply places every start anew
                del self._restored[name]
                self._remember(name, None)
        report = await self.pass_once()
        refused = report.refused
        for _ in range(MAX_APPLY_PASSES):
            await self.settled()
            if self.waiting_gpu:
                await asyncio.sleep(0.25)  # evictions settling: NVML may show the room soon
            report = await self.pass_once()
            if not (report.actions or self.waiting_gpu):
                break
        await self.settled()
        deferred = report.deferred
        assert self.manifests is not None and self.desired is not None
        unschedulable = [
            (a, self.phases[a.model].reason)
            for a in deferred
            if a.model in self.phases and self.phases[a.model].phase == Phase.UNSCHEDULABLE
        ]
        return ApplyResult(
            self.manifests,
            self.desired,
            self.generation,
            list(self.outcomes),
            refused,
            dict(self.unavailable),
            dict(self.weights_problems),
            unschedulable,
            self.pins,
        )

    async def settled(self) -> None:
        """Wait until no action or download is under way (and their phase writes are done)."""
        while self.busy or self.downloads:
            await asyncio.gather(
                *self.busy.values(), *self.downloads.values(), return_exceptions=True
            )
        await self.flush_writes()

    async def flush_writes(self) -> None:
        """Wait for the events and phases being written in the background."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    async def stop(self) -> None:
        """Shutdown: cancel actions and downloads (backends started stay for adoption)."""
        self.controller.weights.close()
        if self._info_task is not None:
            self._info_task.cancel()
        for task in [*self.busy.values(), *self.downloads.values()]:
            task.cancel()
        self._waiters.fail_all(WakeFailed("modelplane is shutting down"))
        await asyncio.gather(*self.busy.values(), *self.downloads.values(), return_exceptions=True)
        await self.flush_writes()

    async def wait_first_pass(self) -> None:
        await self._first_pass.wait()

    # --- one pass ---------------------------------------------------------------------------

    async def pass_once(self) -> PassReport:
        async with self._pass_lock:
            if self.reload or self.desired is None:
                self.reload = False
                await self._load()
            elif self.online and time.time() - self._resolved_at >= self.desired.node.resync:
                await self._refresh_revisions()
            if self.desired is None:
                return PassReport()
            desired = self.desired
            before = self.unavailable
            self.actual, self.unavailable = await self.controller.observe(desired)
            self.cluster = await self._read_cluster()
            await self._note_runtimes(before)
            blind = self._blind()
            self.inventory = await asyncio.to_thread(read_inventory, desired.node.gpus)
            if todo := missing(self.estimates, desired):  # new, changed, or weights arrived
                self.estimates.update(await self._estimate(todo))
            self.pins = pins_problem(
                desired, self.inventory.gpus, desired.node.vram_reserve, self.estimates
            )
            await self._sync_ready()
            now = self.last_pass_at = time.time()
            report = PassReport()
            try:
                actions = plan(
                    desired,
                    self.actual,
                    now,
                    self.activity.snapshot(),
                    allow_empty=self.allow_empty,
                )
                report.refused = self.emptied
            except PruneRefused as exc:
                actions = []
                report.refused = str(exc)
            if report.refused is None:
                self._refused = None
            elif self._refused != report.refused:
                self._refused = report.refused
                log.warning("%s", report.refused)
                self.event("PruneRefused", report.refused)
            actions = [a for a in actions if a.model not in blind]  # unseen: nothing to do
            actions = await self._gate_downloads(actions, now)
            report.actions = await self._schedule(actions, now, report)
            if self.dry_run:
                await self._read_weights_info()
            else:
                report.actions = [a for a in report.actions if self.dispatch(a, now)]
                self._refresh_weights_info()
            self.passes += 1
            self._first_pass.set()
            self._changed()
            return report

    async def _read_cluster(self) -> Cluster:
        """The Ray cluster's nodes (with ``Node.ray``), and where its models are: those that
        run or start, and the starts under way (placed; their actors perhaps not created yet).
        A cluster that cannot be reached is an unavailable runtime, like a daemon that is down.
        """
        assert self.desired is not None
        if self.desired.node.ray is None or "ray" in self.unavailable:
            return Cluster()
        try:
            nodes = await self.controller.runtimes.ray_runtime().nodes()
        except RuntimeUnavailable as exc:
            self.unavailable["ray"] = str(exc)
            return Cluster()
        starting = {n: node for n, node in self._placed_nodes.items() if n in self.busy}
        return Cluster(tuple(nodes), {**starting, **where_models_run(self.actual)})

    async def _estimate(self, names: list[str]) -> dict[str, Estimate | str]:
        """VRAM estimates: a model of this box needs one where the box has GPUs, a Ray model
        where some node of the cluster has (blocking file reads: in a thread)."""
        assert self.desired is not None
        desired = self.desired
        resolve = self.controller.executor.resolve_path
        on_ray = [n for n in names if desired.models[n].runtime == "ray"]
        here = [n for n in names if n not in on_ray]
        found = await asyncio.to_thread(
            estimate_all, desired, resolve, here, bool(self.inventory.gpus)
        )
        if on_ray:
            has_gpus = self.cluster.has_gpus
            found |= await asyncio.to_thread(estimate_all, desired, resolve, on_ray, has_gpus)
        return found

    def local_claims(self, extra: Mapping[str, tuple[Claim, ...]] | None = None) -> list[Claim]:
        """Claims on this box's GPUs: those of the Ray models are on their nodes' GPUs
        (see :attr:`cluster`), whose indices mean other devices."""
        merged = {**self.claims, **(extra or {})}
        on_ray = {n for n, node in where_models_run(self.actual).items() if node}
        on_ray |= (
            {n for n, m in self.desired.models.items() if m.runtime == "ray"}
            if self.desired
            else set()
        )
        return [c for name, cs in merged.items() if name not in on_ray for c in cs]

    def _refresh_weights_info(self) -> None:
        """Revision, size and quantisation for status, read beside the pass: a GGUF header can
        take seconds to parse (a 262k-token vocabulary), which no pass may wait for."""
        if self._info_task is None or self._info_task.done():
            self._info_task = asyncio.create_task(self._read_weights_info(), name="weights info")

    async def _read_weights_info(self) -> None:
        if self.desired is not None:
            self.weights_info = await self.controller.weights.info(
                self.desired, set(self.downloads)
            )

    async def _load(self) -> None:
        store = self.controller.store
        try:
            manifests, desired = await self.controller.load(
                online=self.online, persist=not self.dry_run
            )
        except FileNotFoundError as exc:
            self.load_error = str(exc)  # keep what is in force; nothing stops
            return
        self._resolved_at = time.time()
        self.load_error = None
        self.emptied = None
        if not desired.models and not self.allow_empty:
            manifests, desired = await self._keep_last_set(manifests, desired)
        # an emptied set must not wipe the last valid versions (nor end loads by hand)
        keep = (bool(desired.models) and self.emptied is None) or self.allow_empty
        if self.dry_run:
            last = await store.last_generation()
            self.generation = last.id if last else 0
        else:
            if keep:
                await store.replace_documents(i.stored() for i in manifests.in_force())
            # (a new generation's events say what changed, invalid documents included)
            self.generation, _ = await self.controller.record_generation(
                manifests, desired, "applied"
            )
        for name, model in desired.models.items():
            state = self.phases.get(name)
            if (
                state
                and state.phase == Phase.FAILED
                and not self.backoff.get(name, model.spec_hash)
            ):
                self._forget_phase(name)  # a new spec gets a fresh start
        for name in set(self.phases) - set(desired.models) - set(self.busy):
            self.backoff.reset(name)
            self._forget_phase(name)
        for name, state in self._restored.items():
            if name in desired.models:
                self.phases.setdefault(name, state)
        self._restored = {}
        self._failing = {n: why for n, why in self._failing.items() if n in desired.models}
        if keep:  # (a refused, emptied set changes nothing)
            digests = manifest_digests(manifests, desired)
            if self.dry_run:
                self.overrides.forget_ended(digests)
            else:
                await self.overrides.check(digests)
        self.manifests, self.desired = manifests, desired
        self.unschedulable_wait = desired.node.proxy.queue_timeout
        self.estimates = {}  # the pass estimates every model, after reading the inventory

    async def _keep_last_set(
        self, manifests: ManifestSet, desired: Desired
    ) -> tuple[ManifestSet, Desired]:
        """The directory holds no Model (emptied, or unreadable as a whole): the last set stays
        in force, every model Stale and still routed, until it holds one again (the prune guard,
        which would otherwise only keep the processes). ``--allow-empty`` lets it go."""
        directory = str(self.controller.manifest_dir)
        reason = ManifestError(
            directory,
            1,
            1,
            "",
            "",
            "no Model manifest in this directory (emptied or unreadable?): the last set stays "
            "in force, requests included, until it has one again",
        )
        kept, held = await self.controller.load_last(
            reason, online=self.online, persist=not self.dry_run
        )
        if not held.models:  # nothing was in force: nothing to keep
            return manifests, desired
        self.emptied = (
            f"refusing to stop every model ({', '.join(sorted(held.models))}): the manifest set "
            "has no models (empty or unreadable directory?); the last set stays in force. "
            "Pass --allow-empty to stop them anyway."
        )
        return kept, held

    async def _refresh_revisions(self) -> None:
        """At each resync: ask the hub again; a moved branch is a new spec hash (recreate)."""
        assert self.manifests is not None and self.desired is not None
        self._resolved_at = time.time()
        revisions = await self.controller.weights.resolve_all(
            self.manifests, persist=not self.dry_run
        )
        desired = build_desired(self.manifests, revisions)
        changed = {
            name
            for name, model in desired.models.items()
            if name in self.desired.models
            and self.desired.models[name].spec_hash != model.spec_hash
        }
        self.desired = desired
        for name in changed:  # new files: this pass estimates them again
            self.estimates.pop(name, None)

    async def _note_runtimes(self, before: dict[str, str]) -> None:
        """An event when a runtime becomes unreachable, and when it answers again."""
        for name, why in self.unavailable.items():
            if name not in before:
                log.warning("%s runtime unavailable: %s", name, why)
                self.event("RuntimeUnavailable", f"{name}: {why}")
        for name in set(before) - set(self.unavailable):
            log.info("%s runtime available again", name)
            self.event("RuntimeAvailable", f"{name} answers again")

    def _blind(self) -> set[str]:
        """Models on a runtime that cannot be listed now (docker daemon down): whether their
        backends still run is unknown, so they are not routed to and no action touches them
        (no phantom crash, no start against a dead daemon) until the runtime answers again."""
        assert self.desired is not None
        blind = unseen(self.desired, self.unavailable)
        for name, model in self.desired.models.items():
            why = self.unavailable.get(model.runtime)
            state = self.phases.get(name)
            if why is not None:
                if name not in self.busy:
                    self.ready.pop(name, None)
                    self._set_phase(
                        name, Phase.UNKNOWN, f"{model.runtime} runtime unavailable: {why}"
                    )
            elif state is not None and state.phase == Phase.UNKNOWN:
                self._forget_phase(name)  # seen again: this pass finds out what runs
        return blind

    async def _sync_ready(self) -> None:
        """Adopt healthy backends we did not start; forget ones that are gone."""
        running = {i.model: i for i in self.actual if i.managed and i.state == "running"}
        exited = {i.model: i for i in self.actual if i.managed and i.state == "exited"}
        for name in [*self.ready, *(self.broken - set(self.ready))]:
            if name in self.busy:
                self.broken.discard(name)  # an action under way decides what happens next
            if name in self.busy or name in running:
                continue
            self.ready.pop(name, None)
            self.broken.discard(name)
            gone = exited.get(name)
            reason = (gone.exit_reason if gone else None) or "backend is gone"
            uptime = time.time() - gone.started_at if gone and gone.started_at else None
            tail = await self._log_tail(gone) if gone else ""
            self.event("Crashed", reason, name)
            self._record_failure(name, f"crashed: {reason}", tail, uptime=uptime)
        for name, inst in running.items():
            if name in self.ready or name in self.busy or inst.endpoint is None:
                continue
            if await self.controller.runtimes.get(inst.runtime).healthy(inst):
                self.activity.wanted.discard(name)  # it runs: a wake's wish is fulfilled
                self.broken.discard(name)
                self.ready[name] = inst.endpoint
                self._set_phase(name, Phase.READY)
                self._resolve(name, inst.endpoint)
            elif name not in self.broken:  # a broken one still running is dying (or hung)
                self._set_phase(name, Phase.STARTING, "health check not answering yet")

    async def _gate_downloads(self, actions: list[Action], now: float) -> list[Action]:
        """Hold starts until the weights are there; plan downloads (see weights.gate)."""
        assert self.desired is not None
        desired = self.desired
        blocked = {
            name
            for name, model in desired.models.items()
            if not self.backoff.may_start(name, model.spec_hash, now)
        }
        states = await self.controller.weights.states(desired)
        gated = gate_downloads(actions, desired, states, set(self.downloads), blocked)
        retry_at = self._resolved_at + desired.node.resync
        for name, problem in gated.problems.items():
            if self.weights_problems.get(name) != problem:
                self.event("Failed", f"weights: {problem}", name)
            self._set_phase(name, Phase.FAILED, problem, retry_at)
            self._waiters.fail(name, WeightsUnavailable(problem))
            self.activity.wanted.discard(name)
        for name in set(self.weights_problems) - set(gated.problems):
            state = self.phases.get(name)
            if (
                state
                and state.phase == Phase.FAILED
                and state.reason == self.weights_problems[name]
            ):
                self._forget_phase(name)
        self.weights_problems = gated.problems
        return gated.actions

    async def _schedule(
        self, actions: list[Action], now: float, report: PassReport
    ) -> list[Action]:
        """Place starts on GPUs, plan evictions, and mark what cannot be placed. Returns the
        actions to run now: stops and evictions first, then the starts that were placed."""
        assert self.desired is not None
        desired = self.desired
        running = {i.model: i for i in self.actual if i.managed and i.state == "running"}
        for name in list(self.claims):
            if name not in running and name not in self.busy:
                del self.claims[name]
        for name, inst in running.items():
            if name not in self.claims:
                self.claims[name] = instance_claims(name, inst.gpus, self.estimates.get(name))
        claims, candidates = holders(
            desired,
            self.actual,
            self.claims,
            self.estimates,
            self.inventory,
            self.activity.snapshot(),
            now,
            evictable={n for n in self.ready if n not in self.busy},
        )
        # While victims drain and stop, and briefly after (until NVML shows their memory
        # free), the starts they make room for wait instead of evicting more.
        settle = self.evicting or now < self.settle_until
        settling = frozenset(self.waiting_gpu) if settle else frozenset()
        result = schedule_everywhere(
            actions,
            desired,
            self.actual,
            self.inventory.gpus,
            desired.node.vram_reserve,
            claims,
            self.estimates,
            candidates,
            settling,
            self.cluster,
        )
        report.schedule = result
        held = {**result.waiting, **result.unschedulable}
        report.deferred = [a for a in actions if a.kind in STARTS and a.model in held]
        self.waiting_gpu = dict(result.waiting)
        for name, reason in result.waiting.items():
            self.unschedulable_since.pop(name, None)
            self._set_phase(name, Phase.STARTING, reason)
        for name, reason in result.unschedulable.items():
            # One event per episode: the reason's figures move with NVML's every pass.
            if name not in self.unschedulable_since:
                self.unschedulable_since[name] = now
                self.event("Unschedulable", reason, name)
            self._set_phase(name, Phase.UNSCHEDULABLE, reason)
        for name in result.claims:
            self.unschedulable_since.pop(name, None)
        self._placed = result.claims
        self._placed_nodes |= result.nodes
        first = [a for a in result.actions if a.kind not in STARTS]
        return first + [a for a in result.actions if a.kind in STARTS]

    # --- actions ----------------------------------------------------------------------------

    def dispatch(
        self, action: Action, now: float, manual: bool = False
    ) -> asyncio.Task[None] | None:
        """Run ``action`` in the background unless the model already has one under way.

        A planned unload is dropped when a request arrived since the plan was made; a manual one
        (``manual``) drains the requests in flight first.
        """
        name = action.model
        if action.kind == "download":
            return self._start_download(action)
        if name in self.busy:
            return None
        if action.kind in ("unload", "evict") and self.activity.busy(name) and not manual:
            return None
        model = self.desired.models.get(name) if self.desired else None
        if (
            action.kind == "start"
            and model
            and not self.backoff.may_start(name, model.spec_hash, now)
        ):
            return None  # backing off after failed starts
        cleanup = action.instance is not None and action.instance.state == "exited"
        if action.kind in STARTS and name in self._placed:
            self.claims[name] = self._placed[name]
        if action.kind in STOPS and not cleanup:
            self.ready.pop(name, None)
            self._set_phase(name, Phase.DRAINING, action.cause)
        elif action.kind in STARTS:
            self._set_phase(name, Phase.STARTING, action.cause)
        # a stop that cleans up after a crash keeps the phase: Failed, with its retry time
        task = asyncio.create_task(self._run_action(action), name=f"action {action}")
        self.busy[name] = task
        if action.kind == "evict":
            self.evicting.add(name)
        return task

    async def _run_action(self, action: Action) -> None:
        name = action.model
        assert self.desired is not None
        desired = self.desired
        outcome: Outcome | None = None
        try:
            if action.kind in STOPS:
                await self._drain(name)
            if action.kind in STARTS:
                self._set_phase(name, Phase.STARTING, action.cause)
            outcome = await self.controller.executor.execute(action, desired, self.generation)
            if action.kind in STARTS:
                self.activity.wanted.discard(name)
                if outcome.ok and outcome.instance and outcome.instance.endpoint:
                    started = outcome.instance
                    if started.node_id:  # Ray chose the GPUs on the node: claim those
                        estimate = self.estimates.get(name)
                        self.claims[name] = instance_claims(name, started.gpus, estimate)
                    # what runs now, until the next pass lists it (views show its node)
                    self.actual = [i for i in self.actual if i.model != name] + [started]
                    self.ready[name] = started.endpoint
                    self._set_phase(name, Phase.READY)
                    self._resolve(name, started.endpoint)
                else:
                    self.claims.pop(name, None)
                    self._record_failure(name, outcome.message, permanent=outcome.permanent)
            elif outcome.ok:
                self.claims.pop(name, None)
                if action.kind == "evict":
                    self.settle_until = time.time() + SETTLE
                crashed = action.instance is not None and action.instance.state == "exited"
                if name not in desired.models:
                    self._forget_phase(name)
                elif not crashed:  # after a crash the phase stays Failed, with its reason
                    self._set_phase(name, Phase.ASLEEP, action.cause)
            else:
                self._set_phase(name, Phase.FAILED, outcome.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("action %s failed", action)
            outcome = Outcome(action, False, f"{type(exc).__name__}: {exc}")
            self._record_failure(name, outcome.message)
        finally:
            if outcome is not None:
                self.outcomes.append(outcome)
            self.busy.pop(name, None)
            self.evicting.discard(name)
            self._ended()

    def _start_download(self, action: Action) -> asyncio.Task[None] | None:
        """Downloads run beside the model's other actions: they never block them, or requests."""
        name = action.model
        if name in self.downloads:
            return None
        if name not in self.ready:
            self._set_phase(name, Phase.DOWNLOADING, action.cause)
        task = asyncio.create_task(self._run_download(action), name=f"action {action}")
        self.downloads[name] = task
        return task

    async def _run_download(self, action: Action) -> None:
        name = action.model
        outcome: Outcome | None = None
        try:
            outcome = await self.controller.weights.download(action, self.on_progress)
            model = self.desired.models.get(name) if self.desired else None
            if outcome.ok:  # (the next pass estimates its VRAM from the files)
                self._download_failed.pop(name, None)
                if name not in self.ready:
                    self._set_phase(name, Phase.ASLEEP, "weights ready")
            else:
                self._download_failed[name] = model.spec_hash if model else ""
                self._waiters.fail(name, WeightsUnavailable(outcome.message))
                self.activity.wanted.discard(name)
                self._record_failure(name, outcome.message, permanent=outcome.permanent)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("download %s failed", action)
            outcome = Outcome(action, False, f"{type(exc).__name__}: {exc}")
            self._record_failure(name, outcome.message)
        finally:
            if outcome is not None:
                self.outcomes.append(outcome)
            self.downloads.pop(name, None)
            self._ended()

    def _record_failure(
        self,
        name: str,
        message: str,
        log_tail: str = "",
        *,
        uptime: float | None = None,
        permanent: bool = False,
    ) -> None:
        """Count a failed start or a crash; the model waits out its backoff before the next try.

        The phase is ``Failed`` at once (with the reason and the next retry time): requests get
        a 502/503 with ``Retry-After`` instead of waiting on a model that keeps crashing.
        """
        model = self.desired.models.get(name) if self.desired else None
        failure = self.backoff.record_failure(
            name,
            model.spec_hash if model else "",
            time.time(),
            message,
            log_tail,
            uptime=uptime,
            permanent=permanent,
        )
        retry_at = failure.next_retry if failure.next_retry != float("inf") else None
        self._failing[name] = message
        detail = f" (failure {failure.count})" if failure.count > 1 else ""
        self._set_phase(name, Phase.FAILED, message + detail, retry_at)
        self._waiters.fail(name, WakeFailed(message))

    async def _log_tail(self, instance: Instance, lines: int = 20) -> str:
        try:
            return await self.controller.runtimes.get(instance.runtime).logs(instance.model, lines)
        except Exception:
            return ""

    async def _drain(self, name: str) -> None:
        """Let requests in flight finish (bounded) before the backend stops."""
        deadline = time.monotonic() + self.drain_timeout
        while self.activity.busy(name) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    def _ended(self) -> None:
        """An action or a download ended: the next pass may do what waited for it."""
        self._changed()
        self.request_pass()

    # --- waking -----------------------------------------------------------------------------

    async def wake(self, name: str, timeout: float) -> str:
        """The endpoint of ``name`` once ready; one start however many callers wait."""
        endpoint = self.ready.get(name)
        if endpoint is not None:
            return endpoint
        self._weights_unavailable(name)
        waiter = self._waiters.join(name)
        self.activity.wanted.add(name)
        self.request_pass()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(waiter), min(remaining, 0.5))
            since = self.unschedulable_since.get(name)
            if since is not None and time.time() - since >= self.unschedulable_wait:
                state = self.phases.get(name)
                # Nobody waits any more: stop trying to place it (the phase keeps the reason;
                # the next request tries again).
                self.activity.wanted.discard(name)
                self.unschedulable_since.pop(name, None)
                raise WakeUnschedulable(state.reason if state else "cannot be placed")

    def _weights_unavailable(self, name: str) -> None:
        """Fail a wake at once when no download will bring the weights until something changes."""
        model = self.desired.models.get(name) if self.desired else None
        if model is None:
            return
        if name in self.weights_problems:
            raise WeightsUnavailable(self.weights_problems[name])
        failure = self.backoff.get(name, model.spec_hash)
        if failure and failure.permanent and self._download_failed.get(name) == model.spec_hash:
            raise WeightsUnavailable(failure.reason)

    def _resolve(self, name: str, endpoint: str) -> None:
        if self._waiters.resolve(name, endpoint):
            # Used from now: the requests that waited have not begun yet, and a slow start
            # must not look idle past stayWarm to the next pass before they do.
            self.activity.touch(name)

    def backend_failed(self, name: str, reason: str) -> None:
        """The proxy saw the backend break: stop routing to it; the next pass looks at it."""
        if self.ready.pop(name, None) is not None:
            self._failing[name] = reason
            self._set_phase(name, Phase.FAILED, reason)
            self.broken.add(name)  # the next pass records a crash (and backs off) if it exited
        self.request_pass()

    def unload_due(self, name: str) -> float | None:
        """When ``name`` is unloaded if no request comes; ``None`` when it is not (not running,
        pinned, loaded by hand, suspended, or requests in flight)."""
        model = self.desired.models.get(name) if self.desired else None
        if model is None or name not in self.ready or name in self.busy:
            return None
        if model.pinned or model.spec.suspend or name in self.activity.held:
            return None
        if self.activity.busy(name):
            return None
        started = next((i.started_at for i in self.actual if i.model == name), None)
        last = self.activity.last_used.get(name) or started or self.last_pass_at
        return max(last + model.spec.stay_warm, self.activity.warm_until.get(name, 0.0))

    @property
    def waiting_for_room(self) -> bool:
        """Some start waits for GPU memory: the end of a request may free an eviction victim."""
        return bool(self.waiting_gpu or self.unschedulable_since)

    # --- phases -----------------------------------------------------------------------------

    def phase_of(self, name: str) -> PhaseState:
        """What ``name`` is doing now, as every view shows it (see control/snapshot.py)."""
        instance = next((i for i in self.actual if i.model == name and i.managed), None)
        return derive_phase(self.phases.get(name), name in self.ready, name in self.busy, instance)

    def _set_phase(
        self, name: str, phase: Phase, reason: str = "", retry_at: float | None = None
    ) -> None:
        current = self.phases.get(name)
        if current and current.phase == phase and current.reason == reason:
            if current.retry_at != retry_at:
                current.retry_at = retry_at
                self._remember(name, current)
            return
        state = self.phases[name] = PhaseState(phase, reason, retry_at, time.time())
        self._remember(name, state)
        if phase == Phase.READY and name in self._failing:
            failure = self._failing.pop(name)
            self.event("Recovered", f"{name} is ready again (it had failed: {failure})", name)
        self._changed()

    def _forget_phase(self, name: str) -> None:
        if self.phases.pop(name, None) is not None:
            self._remember(name, None)

    def _remember(self, name: str, state: PhaseState | None) -> None:
        """Keep the phase in the database for ``status`` without a running service."""
        store = self.controller.store
        if state is None or state.phase not in REMEMBERED:
            self._write(store.clear_model_state(name))
        else:
            self._write(store.set_model_state(name, state.phase, state.reason, state.retry_at))

    def event(self, kind: str, message: str, model: str | None = None) -> None:
        """Record an event in the background (``stop`` waits for it to be written)."""
        self._write(self.controller.store.add_event(kind, message, model))

    def _write(self, write: Coroutine[Any, Any, object]) -> None:
        """A database write from the pass or from synchronous code, in the background (kept
        until done; :meth:`flush_writes` waits for them). A dry run writes nothing."""
        if self.dry_run:
            write.close()
            return
        task = asyncio.get_running_loop().create_task(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()
