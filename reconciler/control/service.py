"""``modelplane run``: the reconcile loop and the proxy in one asyncio process.

:class:`Service` is the :class:`proxy.gateway.Gateway` the proxy talks to: it answers which
models exist and where they listen, wakes asleep ones through the loop, and keeps the idle
clocks and the request log (written to SQLite in batches, off the request path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from proxy.gateway import PRIORITIES, ApiKey, ModelRoute, Refused, RequestRecord, Unavailable
from reconciler.gitops.applied import applied, dirty_warning
from reconciler.gitops.worktree import GitInfo, git_info_async
from reconciler.gpus.inventory import Inventory, inventory_json
from reconciler.gpus.types import Claim
from reconciler.manifests import manifest_set as manifest_sets
from reconciler.ops.alerts import EventNotifications
from reconciler.ops.webhooks import display_url
from reconciler.planning.planner import Action
from reconciler.state.store import Event, ModelState

from .activity import ActivityTracker
from .controller import Controller
from .loop import ReconcileLoop, WakeFailed, WakeUnschedulable, WeightsUnavailable
from .overrides import manifest_digests
from .pull_mode import PullMode
from .status import model_statuses

log = logging.getLogger("modelplane.service")

FLUSH_INTERVAL = 1.0  # seconds between batched writes of the request log and idle clocks
# A wake waits a little past startupTimeout, so that a start that times out ends it with its
# own reason and log lines (502) rather than a bare 503.
WAKE_SLACK = 5.0


class Service:
    """Implements :class:`proxy.gateway.Gateway` on top of the reconcile loop."""

    def __init__(self, controller: Controller, allow_empty: bool = False) -> None:
        self.controller = controller
        self.activity = ActivityTracker()
        self.loop = ReconcileLoop(controller, self.activity, allow_empty=allow_empty)
        self.loop.on_change.append(self._rebuild_routes)
        self._routes: dict[str, ModelRoute] = {}  # by name and by alias
        self._route_list: list[ModelRoute] = []
        self._created: dict[str, int] = {}  # when this process first saw each model
        self._records: list[RequestRecord] = []
        self._followers: set[asyncio.Queue[Event | None]] = set()  # None: the stream ends
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        controller.store.listeners.append(self._on_event)
        self.pull: PullMode | None = None  # Node.git
        self.notifications = EventNotifications()  # Node.notify
        controller.store.listeners.append(self.notifications.on_event)
        self.loop.on_change.append(self._configure_notifications)

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Continue idle clocks from the database, run the first pass, start the loop."""
        self.activity.last_used.update(await self.controller.store.last_used())
        await self.controller.weights.forget_interrupted()
        await self.loop.overrides.restore()
        await self._start_ops()
        self._tasks = [
            asyncio.create_task(self.loop.run(), name="reconcile loop"),
            asyncio.create_task(self.loop.watch(), name="manifest watcher"),
            asyncio.create_task(self.loop.watch_docker(), name="docker events"),
            asyncio.create_task(self._flush_forever(), name="request log"),
            asyncio.create_task(self._watch_git(), name="git state"),
        ]
        await self.loop.wait_first_pass()

    async def _start_ops(self) -> None:
        """Webhooks and pull mode, from the directory's Node manifest, before the first pass."""
        try:  # only the Node is needed: no revisions resolved, nothing remembered
            manifests = manifest_sets.load(
                self.controller.manifest_dir, await self.controller.store.documents()
            )
        except FileNotFoundError:
            return
        node_name = manifests.node_doc.name if manifests.node_doc else None
        self.notifications.configure(manifests.node.notify, node_name)
        if manifests.node.git is None:
            return
        self.pull = PullMode(self.controller, manifests.node.git)
        self.pull.on_revision.append(lambda: self.loop.trigger(reload=True))
        if self.pull.use_checked_out() is None:
            await self.pull.fetch()  # nothing to reconcile from until the first fetch
            self.pull.start()
        else:
            self.pull.start(now=True)  # serve the last good revision at once, then fetch

    def _configure_notifications(self) -> None:
        manifests = self.loop.manifests
        if manifests is not None:
            name = manifests.node_doc.name if manifests.node_doc else None
            self.notifications.configure(manifests.node.notify, name)

    async def _watch_git(self) -> None:
        """A commit (or checkout) that changes no file under the directory still makes a new
        generation: look at the work tree every resync and reload when its state moved."""

        def key(info: GitInfo | None) -> tuple[object, ...]:
            return (info.sha, info.dirty_files) if info else ()

        while True:
            desired = self.loop.desired
            await asyncio.sleep(desired.node.resync if desired else 1.0)
            if self.pull is not None or self.loop.passes == 0:
                continue
            info = await git_info_async(self.controller.manifest_dir)
            if key(info) != key(self.controller.git):
                self.loop.trigger(reload=True)

    async def stop(self) -> None:
        """Stop the loop; backends keep running for the next start to adopt."""
        await self.loop.stop()
        if self.pull is not None:
            await self.pull.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, *self.loop.busy.values(), return_exceptions=True)
        await self._flush()
        await self.notifications.aclose()
        await self.controller.close()

    # --- routes -----------------------------------------------------------------------------

    def _rebuild_routes(self) -> None:
        desired = self.loop.desired
        if desired is None:
            return
        routes: dict[str, ModelRoute] = {}
        listing = []
        for name, model in desired.models.items():
            phase = self.loop.phases.get(name)
            route = ModelRoute(
                name=name,
                aliases=tuple(model.spec.aliases),
                phase="Ready" if name in self.loop.ready else (phase.name if phase else "Asleep"),
                priority=PRIORITIES[model.spec.priority],
                max_concurrency=model.spec.max_concurrency,
                startup_timeout=model.spec.startup_timeout,
                endpoint=self.loop.ready.get(name),
                created=self._created.setdefault(name, int(time.time())),
                labels=dict(model.labels),
            )
            listing.append(route)
            routes[name] = route
            for alias in model.spec.aliases:
                routes.setdefault(alias, route)
        self._routes, self._route_list = routes, listing

    def routes(self) -> list[ModelRoute]:
        return list(self._route_list)

    def route(self, name: str) -> ModelRoute | None:
        return self._routes.get(name)

    async def wake(self, model: str) -> str:
        endpoint = self.loop.ready.get(model)
        if endpoint is not None:
            return endpoint
        desired = self.loop.desired
        if desired is None or model not in desired.models:
            raise Unavailable(f"model {model!r} is not served here", status=404)
        spec = desired.models[model].spec
        if spec.suspend:
            raise Unavailable(f"{model} is suspended and not running", retry_after=60)
        down = self.loop.unavailable.get(desired.models[model].runtime)
        if down is not None:
            raise Unavailable(f"{model} cannot start: runtime unavailable: {down}", 503, 5.0)
        failure = self.loop.backoff.get(model, desired.models[model].spec_hash)
        if failure is not None and failure.permanent:  # retrying cannot help: say so at once
            raise Unavailable(f"{model} failed: {failure.reason} (fix the manifest)", 503, 60.0)
        phase = self.loop.phases.get(model)
        now = time.time()
        if phase and phase.name == "Failed" and phase.retry_at and phase.retry_at > now:
            raise Unavailable(
                f"{model} failed: {phase.reason}; next start in {phase.retry_at - now:.0f}s",
                503,
                phase.retry_at - now,
            )
        try:
            return await self.loop.wake(model, spec.startup_timeout + WAKE_SLACK)
        except WeightsUnavailable as exc:
            phase = self.loop.phases.get(model)
            retry = max(1.0, (phase.retry_at or 0) - time.time()) if phase else 30.0
            raise Unavailable(f"{model}: weights unavailable: {exc}", 503, retry) from None
        except WakeFailed as exc:
            phase = self.loop.phases.get(model)
            retry = max(1.0, (phase.retry_at or time.time()) - time.time()) if phase else 5.0
            raise Unavailable(f"{model} failed to start: {exc}", 502, retry) from None
        except WakeUnschedulable as exc:
            raise Unavailable(f"{model} cannot be placed: {exc}", 503, 30.0) from None
        except TimeoutError:
            if model in self.loop.downloads:
                raise Unavailable(
                    f"{model} is still downloading its weights; retry later", 503, 30.0
                ) from None
            raise Unavailable(
                f"{model} did not become ready within {spec.startup_timeout:.0f}s (startupTimeout)",
                503,
                10.0,
            ) from None

    def begin_request(self, model: str) -> None:
        self.activity.begin(model)

    def end_request(self, model: str) -> None:
        if self.activity.end(model) == 0:
            if self.loop.waiting_for_room:
                self.loop.trigger()  # this model may now be evicted for one that waits
            desired = self.loop.desired
            model_spec = desired.models.get(model) if desired else None
            if model_spec is not None and model_spec.spec.stay_warm == 0:
                self.loop.trigger()  # stayWarm 0: unload right after use
            elif model_spec is not None and not model_spec.pinned:
                self.loop.rearm(time.time() + model_spec.spec.stay_warm)  # idle from now

    def backend_failed(self, model: str, reason: str) -> None:
        log.warning("backend failed: %s: %s", model, reason)
        self.loop.backend_failed(model, reason)
        asyncio.get_running_loop().create_task(
            self.controller.store.add_event("BackendFailed", reason, model)
        )

    def record_request(self, record: RequestRecord) -> None:
        self._records.append(record)

    def api_keys(self) -> list[ApiKey]:
        desired = self.loop.desired
        if desired is None:
            return []
        return [ApiKey(k.name, k.sha256, tuple(k.models)) for k in desired.node.api_keys]

    # --- admin ------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if self.loop.passes == 0:
            return False, "first reconcile pass not done yet"
        if self.loop.unavailable:
            why = "; ".join(f"{r}: {m}" for r, m in self.loop.unavailable.items())
            return False, f"runtime unavailable: {why}"
        if self.loop.load_error:
            return False, self.loop.load_error
        return True, "ok"

    def gpu_snapshot(self) -> tuple[Inventory, list[Claim]]:
        """The GPUs as of the last pass, and the claims of the models that run or start."""
        return self.loop.inventory, [c for cs in self.loop.claims.values() for c in cs]

    async def status(self) -> dict[str, Any]:
        desired = self.loop.desired
        gpus = inventory_json(*self.gpu_snapshot())
        if desired is None:
            return {"models": [], "gpus": gpus, "error": self.loop.load_error}
        states = {
            name: ModelState(name, p.name, p.reason, p.since, p.retry_at)
            for name, p in self.loop.phases.items()
            if p.name in ("Failed", "Unschedulable", "Starting", "Draining", "Downloading")
        }
        health = {name: True for name in self.loop.ready}
        weights = await self.controller.weights.info(desired, set(self.loop.downloads))
        rows = model_statuses(
            desired,
            self.loop.actual,
            states,
            self.activity.snapshot(),
            health,
            time.time(),
            self.loop.unavailable,
            weights=weights,
            overrides=self.loop.overrides.descriptions(),
        )
        models = []
        for row in rows:
            entry = row.as_dict()
            phase = self.loop.phases.get(row.name)
            if row.name in self.loop.busy and phase:
                entry["phase"], entry["reason"] = phase.name, phase.reason
            elif row.name in self.loop.ready:
                entry["phase"], entry["endpoint"] = "Ready", self.loop.ready[row.name]
            entry["retryAt"] = phase.retry_at if phase else None
            models.append(entry)
        return {
            "generation": self.loop.generation,
            "models": models,
            "gpus": gpus,
            "errors": [str(e) for e in self.loop.manifests.errors] if self.loop.manifests else [],
            "runtimesUnavailable": self.loop.unavailable,
            **await self._ops_status(),
        }

    async def _ops_status(self) -> dict[str, Any]:
        """Where the manifests in force come from, and what the user should know about it."""
        warnings = []
        if self.pull is not None:
            warnings.append(self.pull.warning())
        else:
            warnings.append(dirty_warning(self.controller.git))
        notifier = self.notifications.notifier
        git = self.pull.status() if self.pull else None  # read together with the warnings
        return {
            "warnings": [w for w in warnings if w],
            "git": git,
            "applied": applied(await self.controller.store.last_generation()),
            "notifications": {
                display_url(url): vars(stats) for url, stats in notifier.stats().items()
            }
            if notifier
            else {},
        }

    async def events(self, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        found = await self.controller.store.events(model=model, limit=limit)
        return [e.as_dict() for e in found]

    async def follow_events(self) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=1000)
        self._followers.add(queue)
        try:
            while not self._closing and (event := await queue.get()) is not None:
                yield event.as_dict()
        finally:
            self._followers.discard(queue)

    def end_followers(self) -> None:
        """End every ``/api/events?follow=1`` stream (shutdown: an open follower would
        otherwise hold the graceful stop for its whole grace period)."""
        self._closing = True
        for queue in self._followers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)

    def _on_event(self, event: Event) -> None:
        for queue in self._followers:
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(event)

    async def reconcile(self) -> dict[str, Any]:
        if self.pull is not None:
            await self.pull.fetch()  # a failure is reported; the last good revision stays
        self.loop.trigger(reload=True)
        await self.loop.pass_once()
        return {
            "generation": self.loop.generation,
            "errors": [str(e) for e in self.loop.manifests.errors] if self.loop.manifests else [],
            "busy": sorted(self.loop.busy),
            "git": self.pull.status() if self.pull else None,
        }

    async def load(self, model: str) -> None:
        """Start ``model`` and keep it loaded until unloaded or its manifest changes (see
        :mod:`reconciler.overrides`)."""
        desired = self.loop.desired
        if desired is None or model not in desired.models or self.loop.manifests is None:
            raise Unavailable(f"model {model!r} is not served here", status=404)
        wanted = desired.models[model]
        if wanted.spec.suspend:
            raise Refused(f"{model} is suspended (spec.suspend: true): it is left as it is")
        if not wanted.pinned:  # a pin holds it already
            digest = manifest_digests(self.loop.manifests, desired)[model]
            await self.loop.overrides.hold(model, digest)
        self.activity.touch(model)
        await self.wake(model)

    async def unload(self, model: str) -> None:
        desired = self.loop.desired
        if desired is None or model not in desired.models:
            raise Unavailable(f"model {model!r} is not served here", status=404)
        if desired.models[model].spec.suspend:
            raise Refused(f"{model} is suspended (spec.suspend: true): it is left as it is")
        if desired.models[model].pinned:
            raise Refused(f"{model} is pinned: it is never unloaded (set pin: false to allow)")
        await self.loop.overrides.release(model, "unloaded by hand")
        self.activity.wanted.discard(model)
        instance = next(
            (i for i in self.loop.actual if i.model == model and i.state == "running"), None
        )
        if instance is None:
            return
        action = Action("unload", model, "unloaded by hand", instance)
        task = self.loop.dispatch(action, time.time(), manual=True) or self.loop.busy.get(model)
        if task is not None:
            await asyncio.shield(task)

    # --- the request log and idle clocks -------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_INTERVAL)
            try:
                await self._flush()
            except Exception:
                log.exception("writing the request log failed")

    async def _flush(self) -> None:
        records, self._records = self._records, []
        store = self.controller.store
        if records:
            await store.add_request_rows(records)  # RequestRecords are rows already
        used = self.activity.take_dirty()
        if used:
            await store.set_last_used(used)
