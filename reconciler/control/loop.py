"""The reconcile loop of ``modelplane run``: triggers, passes, and per-model work in the background.

A pass is quick: it (re)reads the manifests when they changed, lists the runtimes, plans, and
hands each action to a task of its own. Starting a model can take minutes, so it never holds up
the pass, other models' actions, or requests to models that are ready. A model with an action
under way is "busy": later passes leave it alone until that action ends, then run again.

Triggers of a pass: manifest changes (watchfiles, debounced), the periodic resync, wake requests,
stay-warm expiry, the end of an action, and ``POST /api/reconcile``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import watchfiles

from reconciler.gpus.estimates import estimate_all, missing
from reconciler.gpus.inventory import Inventory, node_gpus, read_inventory
from reconciler.gpus.scheduler import holders, instance_claims, schedule
from reconciler.gpus.types import Claim
from reconciler.gpus.vram import Estimate
from reconciler.manifests.manifest_set import ManifestSet
from reconciler.planning.desired import Desired, build_desired
from reconciler.planning.planner import Action, PruneRefused, plan, unseen
from reconciler.runtimes.backoff import CrashBackoff
from reconciler.runtimes.base import Instance
from reconciler.weights.gate import gate_downloads

from .activity import ActivityTracker
from .controller import Controller
from .overrides import Overrides, manifest_digests

log = logging.getLogger("modelplane.loop")

DEBOUNCE_MS = 300
SETTLE = 10.0  # seconds a start waits for evicted models' memory to show free in NVML
UNAVAILABLE_RECHECK = 2.0  # seconds between passes while a runtime (docker) is unreachable


@dataclass
class Phase:
    name: str  # Asleep | Starting | Ready | Draining | Failed | Unschedulable | Downloading
    reason: str = ""
    retry_at: float | None = None
    since: float = 0.0


class WakeFailed(Exception):
    """A start that a wake was waiting for failed (the backend's own fault: HTTP 502)."""


class WakeUnschedulable(Exception):
    """The model could not be placed on the GPUs for as long as a request may wait."""


class WeightsUnavailable(WakeFailed):
    """The model's weights cannot be had (revision unresolved, offline, download failed): 503."""


class ReconcileLoop:
    def __init__(
        self,
        controller: Controller,
        activity: ActivityTracker,
        allow_empty: bool = False,
        drain_timeout: float = 30.0,
    ) -> None:
        self.controller = controller
        self.activity = activity
        self.allow_empty = allow_empty
        self.drain_timeout = drain_timeout
        self.manifests: ManifestSet | None = None
        self.desired: Desired | None = None
        self.generation = 0
        self.load_error: str | None = None
        self.actual: list[Instance] = []
        self.unavailable: dict[str, str] = {}
        self.ready: dict[str, str] = {}  # model → endpoint of a healthy backend
        self.broken: set[str] = set()  # taken out of ready by the proxy: did it crash?
        self.phases: dict[str, Phase] = {}
        self.busy: dict[str, asyncio.Task[None]] = {}
        self.downloads: dict[str, asyncio.Task[None]] = {}  # in the background, beside `busy`
        self.weights_problems: dict[str, str] = {}  # wanted, but no weights to be had: why
        self._download_failed: dict[str, str] = {}  # model → spec hash whose download failed
        self._resolved_at = 0.0
        self.backoff = CrashBackoff()
        self.inventory = Inventory()
        self.estimates: dict[str, Estimate | str] = {}
        self.claims: dict[str, tuple[Claim, ...]] = {}  # held by backends running or starting
        self.waiting_gpu: dict[str, str] = {}  # model → why its start waits for VRAM
        self.evicting: set[str] = set()  # models being evicted now (draining or stopping)
        self.unschedulable_since: dict[str, float] = {}
        self.settle_until = 0.0
        self.unschedulable_wait = 300.0  # Node.proxy.queueTimeout
        self.passes = 0
        self.on_change: list[Callable[[], None]] = []  # called after each pass / phase change
        self.overrides = Overrides(controller.store)  # models loaded by hand (held)
        activity.holds = lambda: self.overrides.held
        self._failing: dict[str, str] = {}  # failed since last Ready (why): next Ready "Recovered"
        self._emitting: set[asyncio.Task[object]] = set()
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._placed: dict[str, tuple[Claim, ...]] = {}
        self._wakeup = asyncio.Event()
        self._pass_wanted = False
        self._last_pass_at = 0.0  # the ``now`` of the last pass's plan
        self._sleeping_until = 0.0  # when the loop wakes up for the next pass
        self._reload = True
        self._pass_lock = asyncio.Lock()
        self._last_errors: list[str] = []
        self._refused: str | None = None
        self._first_pass = asyncio.Event()
        self._stopping = asyncio.Event()

    # --- triggers ---------------------------------------------------------------------------

    def trigger(self, reload: bool = False) -> None:
        """Ask for a pass soon (``reload``: re-read the manifests first)."""
        self._reload = self._reload or reload
        self._pass_wanted = True
        self._wakeup.set()

    def rearm(self, due: float) -> None:
        """A stay-warm expiry is now due at ``due`` (a request ended): make the loop wake up
        then if it sleeps longer, without asking for a pass now."""
        if due < self._sleeping_until:
            self._wakeup.set()

    async def wait_first_pass(self) -> None:
        await self._first_pass.wait()

    async def run(self) -> None:
        """Passes until :meth:`stop`: on a trigger, at the next resync or stay-warm expiry."""
        while not self._stopping.is_set():
            self._pass_wanted = False
            self._wakeup.clear()
            try:
                await self.pass_once()
            except Exception:  # a pass must never kill the service; the next one retries
                log.exception("reconcile pass failed")
            await self._sleep_until_due()

    async def _sleep_until_due(self) -> None:
        """Until a trigger or the next deadline; a :meth:`rearm` only recomputes the deadline."""
        while not (self._pass_wanted or self._stopping.is_set()):
            self._sleeping_until = self._next_deadline()
            timeout = max(0.0, self._sleeping_until - time.time())
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return
            self._wakeup.clear()

    async def watch(self) -> None:
        """Re-read the manifests when any file under the directory changes (debounced)."""
        directory = self.controller.manifest_dir
        while not self._stopping.is_set():
            if not directory.is_dir():
                await asyncio.sleep(1.0)
                continue
            with contextlib.suppress(FileNotFoundError, RuntimeError):
                async for _changes in watchfiles.awatch(
                    directory,
                    debounce=DEBOUNCE_MS,
                    step=50,
                    stop_event=self._stopping,
                    recursive=True,
                ):
                    log.info("manifests changed", extra={"event": "manifests-changed"})
                    self.trigger(reload=True)

    async def watch_docker(self) -> None:
        """See a managed container exit at once (the daemon's event stream), not at resync."""
        from reconciler.runtimes.docker_events import ContainerEvents

        await self.wait_first_pass()  # the manifests say whether docker is used at all
        while not self._stopping.is_set():
            desired = self.desired
            uses_docker = desired is not None and (
                desired.node.runtime == "docker"
                or any(m.runtime == "docker" for m in desired.models.values())
            )
            if not uses_docker:
                await asyncio.sleep(2.0)
                continue
            assert desired is not None
            try:
                # a lost stream (the daemon went away) and its return trigger a pass too
                watch = ContainerEvents(desired.node.docker_host, on_connection=self._docker_link)
                async with watch as events:
                    async for event in events:
                        log.info("container %s: %s", event.model, event.action)
                        self.trigger()
            except Exception as exc:  # the daemon went away: resync reports it; retry soon
                log.warning("docker events unavailable: %s", exc)
                await asyncio.sleep(2.0)

    def _docker_link(self, connected: bool) -> None:
        """The event stream was (re)subscribed or lost: a pass sees what happened meanwhile
        (a container that died before the subscription, a daemon gone or back)."""
        if not connected:
            log.warning("docker event stream lost: checking the daemon")
        self.trigger()

    async def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()
        self.controller.weights.close()
        for task in [*self.busy.values(), *self.downloads.values()]:
            task.cancel()
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(WakeFailed("modelplane is shutting down"))
        await asyncio.gather(*self._emitting, return_exceptions=True)  # events being written

    def _next_deadline(self) -> float:
        now = time.time()
        resync = self.desired.node.resync if self.desired else 30.0
        deadline = now + resync
        if self.desired is None:
            return deadline
        for name in self.ready:
            model = self.desired.models.get(name)
            if model is None or model.pinned or model.spec.suspend or self.activity.busy(name):
                continue
            if name in self.activity.held:
                continue
            last = self.activity.last_used.get(name) or self._started_at(name) or now
            due = last + model.spec.stay_warm + 0.05
            if due > self._last_pass_at:  # one due before the last pass was seen by it already
                deadline = min(deadline, due)
        if self.broken:  # a backend the proxy saw break is not gone yet: look again soon
            deadline = min(deadline, now + 0.5)
        retries = [p.retry_at for p in self.phases.values() if p.retry_at and p.retry_at > now]
        if self.waiting_gpu:
            retries.append(now + 0.5)  # evictions settling: NVML may show the memory free
        elif self.unschedulable_since:  # the end of a request or an action triggers a pass;
            retries.append(now + 2.0)  # this catches memory that others' processes freed
        if self.unavailable:
            retries.append(now + UNAVAILABLE_RECHECK)  # notice a daemon's return soon
        return min([deadline, *retries])

    def _started_at(self, name: str) -> float | None:
        return next((i.started_at for i in self.actual if i.model == name), None)

    # --- one pass ---------------------------------------------------------------------------

    async def pass_once(self) -> None:
        async with self._pass_lock:
            if self._reload or self.desired is None:
                self._reload = False
                await self._load()
            elif time.time() - self._resolved_at >= self.desired.node.resync:
                await self._refresh_revisions()
            if self.desired is None:
                return
            before = self.unavailable
            self.actual, self.unavailable = await self.controller.observe(self.desired)
            await self._note_runtimes(before)
            blind = self._blind()
            self.inventory = await asyncio.to_thread(read_inventory, node_gpus(self.desired.node))
            if todo := missing(self.estimates, self.desired):  # new, changed, or weights arrived
                resolve = self.controller.executor.resolve_path
                found = await asyncio.to_thread(
                    estimate_all, self.desired, resolve, todo, bool(self.inventory.gpus)
                )
                self.estimates.update(found)
            await self._sync_ready()
            now = self._last_pass_at = time.time()
            try:
                actions = plan(
                    self.desired,
                    self.actual,
                    now,
                    self.activity.snapshot(),
                    allow_empty=self.allow_empty,
                )
                self._refused = None
            except PruneRefused as exc:
                actions = []
                if self._refused != str(exc):
                    self._refused = str(exc)
                    await self.controller.store.add_event("PruneRefused", str(exc))
            actions = [a for a in actions if a.model not in blind]  # unseen: nothing to do
            actions = await self._gate_downloads(actions, now)
            for action in await self._schedule(actions, now):
                self.dispatch(action, now)
            self.passes += 1
            self._first_pass.set()
            self._changed()

    async def _note_runtimes(self, before: dict[str, str]) -> None:
        """An event when a runtime becomes unreachable, and when it answers again."""
        store = self.controller.store
        for name, why in self.unavailable.items():
            if name not in before:
                log.warning("%s runtime unavailable: %s", name, why)
                await store.add_event("RuntimeUnavailable", f"{name}: {why}")
        for name in set(before) - set(self.unavailable):
            log.info("%s runtime available again", name)
            await store.add_event("RuntimeAvailable", f"{name} answers again")

    def _blind(self) -> set[str]:
        """Models on a runtime that cannot be listed now (docker daemon down): whether their
        backends still run is unknown, so they are not routed to and no action touches them
        (no phantom crash, no start against a dead daemon) until the runtime answers again."""
        assert self.desired is not None
        blind = unseen(self.desired, self.unavailable)
        for name, model in self.desired.models.items():
            why = self.unavailable.get(model.runtime)
            phase = self.phases.get(name)
            if why is not None:
                if name not in self.busy:
                    self.ready.pop(name, None)
                    self._set_phase(name, "Unknown", f"{model.runtime} runtime unavailable: {why}")
            elif phase is not None and phase.name == "Unknown":
                del self.phases[name]  # seen again: this pass finds out what runs
        return blind

    async def _schedule(self, actions: list[Action], now: float) -> list[Action]:
        """Place starts on GPUs, plan evictions, and mark what cannot be placed."""
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
        result = schedule(
            actions,
            desired,
            self.actual,
            self.inventory.gpus,
            desired.node.vram_reserve,
            claims,
            self.estimates,
            candidates,
            settling,
        )
        self.waiting_gpu = dict(result.waiting)
        for name, reason in result.waiting.items():
            self.unschedulable_since.pop(name, None)
            self._set_phase(name, "Starting", reason)
        for name, reason in result.unschedulable.items():
            # One event per episode: the reason's figures move with NVML's every pass.
            if name not in self.unschedulable_since:
                self.unschedulable_since[name] = now
                await self.controller.store.add_event("Unschedulable", reason, name)
            self._set_phase(name, "Unschedulable", reason)
        for name in result.claims:
            self.unschedulable_since.pop(name, None)
        self._placed = result.claims
        return result.actions

    async def _gate_downloads(self, actions: list[Action], now: float) -> list[Action]:
        """Hold starts until the weights are there; plan downloads (see weights_plan)."""
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
                await self.controller.store.add_event("Failed", f"weights: {problem}", name)
                await self.controller.store.set_model_state(name, "Failed", problem, retry_at)
            self._set_phase(name, "Failed", problem, retry_at)
            self._fail_waiters(name, WeightsUnavailable(problem))
            self.activity.wanted.discard(name)
        for name in set(self.weights_problems) - set(gated.problems):
            phase = self.phases.get(name)
            if phase and phase.name == "Failed" and phase.reason == self.weights_problems[name]:
                del self.phases[name]
                await self.controller.store.clear_model_state(name)
        self.weights_problems = gated.problems
        return gated.actions

    async def _refresh_revisions(self) -> None:
        """At each resync: ask the hub again; a moved branch is a new spec hash (recreate)."""
        assert self.manifests is not None
        self._resolved_at = time.time()
        revisions = await self.controller.weights.resolve_all(self.manifests)
        desired = build_desired(self.manifests, revisions)
        assert self.desired is not None
        changed = {
            name: model
            for name, model in desired.models.items()
            if name in self.desired.models
            and self.desired.models[name].spec_hash != model.spec_hash
        }
        self.desired = desired
        for name in changed:  # new files: this pass estimates them again
            self.estimates.pop(name, None)

    async def _load(self) -> None:
        store = self.controller.store
        try:
            manifests, desired = await self.controller.load()
        except FileNotFoundError as exc:
            self.load_error = str(exc)  # keep what is in force; nothing stops
            return
        self._resolved_at = time.time()
        self.load_error = None
        errors = [str(e) for e in manifests.errors]
        if desired.models or self.allow_empty:  # an emptied set must not wipe the last valid
            await store.replace_documents(i.stored() for i in manifests.in_force())
        self.generation, new = await self.controller.record_generation(
            manifests, desired, "applied"
        )
        if new:
            self._last_errors = errors  # the new generation's event already lists them
        if errors and errors != self._last_errors:
            await store.add_event(
                "Invalid",
                "invalid manifests; last valid versions kept:\n" + "\n".join(errors),
            )
        self._last_errors = errors
        for name, model in desired.models.items():
            phase = self.phases.get(name)
            if phase and phase.name == "Failed" and not self.backoff.get(name, model.spec_hash):
                self.phases.pop(name, None)  # a new spec gets a fresh start
        for name in set(self.phases) - set(desired.models) - set(self.busy):
            self.backoff.reset(name)
            del self.phases[name]
        self._failing = {n: why for n, why in self._failing.items() if n in desired.models}
        if desired.models or self.allow_empty:  # (a refused, emptied set changes nothing)
            await self.overrides.check(manifest_digests(manifests, desired))
        self.manifests, self.desired = manifests, desired
        self.unschedulable_wait = desired.node.proxy.queue_timeout
        self.estimates = {}  # the pass estimates every model, after reading the inventory

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
            await self.controller.store.add_event("Crashed", reason, name)
            self._record_failure(name, f"crashed: {reason}", tail, uptime=uptime)
        for name, inst in running.items():
            if name in self.ready or name in self.busy or inst.endpoint is None:
                continue
            if await self.controller.runtimes.get(inst.runtime).healthy(inst):
                self.activity.wanted.discard(name)  # it runs: a wake's wish is fulfilled
                self.broken.discard(name)
                self.ready[name] = inst.endpoint
                self._set_phase(name, "Ready")
                self._resolve(name, inst.endpoint)
            elif name not in self.broken:  # a broken one still running is dying (or hung)
                self._set_phase(name, "Starting", "health check not answering yet")

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
        if action.kind in ("start", "recreate") and name in self._placed:
            self.claims[name] = self._placed[name]
        if action.kind in ("stop", "unload", "evict", "recreate") and not cleanup:
            self.ready.pop(name, None)
            self._set_phase(name, "Draining", action.cause)
        elif action.kind in ("start", "recreate"):
            self._set_phase(name, "Starting", action.cause)
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
        try:
            if action.kind in ("stop", "unload", "evict", "recreate"):
                await self._drain(name)
            if action.kind in ("start", "recreate"):
                self._set_phase(name, "Starting", action.cause)
            outcome = await self.controller.executor.execute(action, desired, self.generation)
            if action.kind in ("start", "recreate"):
                self.activity.wanted.discard(name)
                if outcome.ok and outcome.instance and outcome.instance.endpoint:
                    self.ready[name] = outcome.instance.endpoint
                    self._set_phase(name, "Ready")
                    self._resolve(name, outcome.instance.endpoint)
                else:
                    self.claims.pop(name, None)
                    self._record_failure(name, outcome.message, permanent=outcome.permanent)
            elif outcome.ok:
                self.claims.pop(name, None)
                if action.kind == "evict":
                    self.settle_until = time.time() + SETTLE
                crashed = action.instance is not None and action.instance.state == "exited"
                if name not in desired.models:
                    self.phases.pop(name, None)
                elif not crashed:  # after a crash the phase stays Failed, with its reason
                    self._set_phase(name, "Asleep", action.cause)
            else:
                self._set_phase(name, "Failed", outcome.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("action %s failed", action)
            self._record_failure(name, f"{type(exc).__name__}: {exc}")
        finally:
            self.busy.pop(name, None)
            self.evicting.discard(name)
            self.trigger()

    def _start_download(self, action: Action) -> asyncio.Task[None] | None:
        """Downloads run beside the model's other actions: they never block them, or requests."""
        name = action.model
        if name in self.downloads:
            return None
        if name not in self.ready:
            self._set_phase(name, "Downloading", action.cause)
        task = asyncio.create_task(self._run_download(action), name=f"action {action}")
        self.downloads[name] = task
        return task

    async def _run_download(self, action: Action) -> None:
        name = action.model
        try:
            outcome = await self.controller.weights.download(action)
            model = self.desired.models.get(name) if self.desired else None
            if outcome.ok:  # (the next pass estimates its VRAM from the files)
                self._download_failed.pop(name, None)
                if name not in self.ready:
                    self._set_phase(name, "Asleep", "weights ready")
            else:
                self._download_failed[name] = model.spec_hash if model else ""
                self._fail_waiters(name, WeightsUnavailable(outcome.message))
                self.activity.wanted.discard(name)
                self._record_failure(name, outcome.message, permanent=outcome.permanent)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("download %s failed", action)
            self._record_failure(name, f"{type(exc).__name__}: {exc}")
        finally:
            self.downloads.pop(name, None)
            self.trigger()

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
        self._set_phase(name, "Failed", message + detail, retry_at)
        self._fail_waiters(name, WakeFailed(message))

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

    # --- waking -----------------------------------------------------------------------------

    async def wake(self, name: str, timeout: float) -> str:
        """The endpoint of ``name`` once ready; one start however many callers wait."""
        endpoint = self.ready.get(name)
        if endpoint is not None:
            return endpoint
        self._weights_unavailable(name)
        waiter = self._waiters.get(name)
        if waiter is None or waiter.done():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[name] = waiter
        self.activity.wanted.add(name)
        self.trigger()
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(waiter), min(remaining, 0.5))
            since = self.unschedulable_since.get(name)
            if since is not None and time.time() - since >= self.unschedulable_wait:
                phase = self.phases.get(name)
                # Nobody waits any more: stop trying to place it (the phase keeps the reason;
                # the next request tries again).
                self.activity.wanted.discard(name)
                self.unschedulable_since.pop(name, None)
                raise WakeUnschedulable(phase.reason if phase else "cannot be placed")

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
        waiter = self._waiters.pop(name, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(endpoint)

    def _fail_waiters(self, name: str, exc: Exception) -> None:
        waiter = self._waiters.pop(name, None)
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
            waiter.exception()  # mark retrieved: a waiter may have timed out already

    def _set_phase(
        self, name: str, phase: str, reason: str = "", retry_at: float | None = None
    ) -> None:
        current = self.phases.get(name)
        if current and current.name == phase and current.reason == reason:
            current.retry_at = retry_at
            return
        self.phases[name] = Phase(phase, reason, retry_at, time.time())
        if phase == "Ready" and name in self._failing:
            failure = self._failing.pop(name)
            self._emit("Recovered", f"{name} is ready again (it had failed: {failure})", name)
        self._changed()

    def _emit(self, kind: str, message: str, model: str | None = None) -> None:
        """Record an event from synchronous code (the task is kept until it is done)."""
        task = asyncio.get_running_loop().create_task(
            self.controller.store.add_event(kind, message, model)
        )
        self._emitting.add(task)
        task.add_done_callback(self._emitting.discard)

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    @property
    def waiting_for_room(self) -> bool:
        """Some start waits for GPU memory: the end of a request may free an eviction victim."""
        return bool(self.waiting_gpu or self.unschedulable_since)

    def backend_failed(self, name: str, reason: str) -> None:
        """The proxy saw the backend break: stop routing to it and look at it now."""
        if self.ready.pop(name, None) is not None:
            self._failing[name] = reason
            self._set_phase(name, "Failed", reason)
            self.broken.add(name)  # the next pass records a crash (and backs off) if it exited
        self.trigger()
