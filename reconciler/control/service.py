"""``modelplane run``: the reconcile engine and its loop, as the proxy's :class:`Gateway`.

:class:`Service` answers which models exist and where they listen, wakes asleep ones through the
engine, keeps the idle clocks and the request log (written to SQLite in batches, off the request
path), and serves the admin API from one :class:`~.snapshot.Snapshot` of the engine's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from proxy.gateway import PRIORITIES, ApiKey, ModelRoute, Refused, RequestRecord, Unavailable
from reconciler.gitops.applied import dirty_warning, history
from reconciler.gitops.pull_mode import PullMode
from reconciler.gitops.worktree import GitInfo, git_info_async
from reconciler.gpus.inventory import Inventory
from reconciler.gpus.types import Claim
from reconciler.manifests import manifest_set
from reconciler.manifests.schema import ApiKeySpec, NodeSpec
from reconciler.ops.alerts import EventNotifications
from reconciler.ops.webhooks import display_url
from reconciler.planning.desired import Desired
from reconciler.planning.planner import Action
from reconciler.runtimes.log_follow import follow_logs
from reconciler.state.store import Event, Generation
from reconciler.units import is_loopback

from .activity import ActivityTracker
from .controller import Controller
from .engine import Engine
from .loop import ReconcileLoop
from .node_settings import FIXED_AT_START, keys_in_force, needs_restart, restart_warning
from .overrides import manifest_digests
from .snapshot import Snapshot, readiness, take_snapshot
from .waiters import WakeFailed, WakeUnschedulable, WeightsUnavailable

log = logging.getLogger("modelplane.service")

FLUSH_INTERVAL = 1.0  # seconds between batched writes of the request log and idle clocks
# A wake waits a little past startupTimeout, so that a start that times out ends it with its
# own reason and log lines (502) rather than a bare 503.
WAKE_SLACK = 5.0


def _log_event(event: Event) -> None:
    """Each action (start, ready in N s, unload, evict, download done…) as one log line."""
    who = f" {event.model}:" if event.model else ""
    log.info("%s%s %s", event.kind, who, event.message)


class Service:
    """Implements :class:`proxy.gateway.Gateway` on top of the reconcile engine."""

    def __init__(self, controller: Controller, allow_empty: bool = False) -> None:
        self.controller = controller
        self.activity = ActivityTracker()
        self.engine = Engine(controller, self.activity, allow_empty=allow_empty)
        self.loop = ReconcileLoop(self.engine)
        self.engine.on_change.append(self._rebuild_routes)
        self._routes: dict[str, ModelRoute] = {}  # by name and by alias
        self._route_list: list[ModelRoute] = []
        self._created: dict[str, int] = {}  # when this process first saw each model
        self._records: list[RequestRecord] = []
        self._followers: set[asyncio.Queue[Event | None]] = set()  # None: the stream ends
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        controller.store.listeners.append(self._on_event)
        controller.store.listeners.append(_log_event)  # `run` in the foreground: one line each
        self.stopped_all = False  # `modelplane down` stopped every backend
        self.pull: PullMode | None = None  # Node.git
        self.notifications = EventNotifications()  # Node.notify
        controller.store.listeners.append(self.notifications.on_event)
        self.engine.on_change.append(self._configure_notifications)
        self.on_exit_request: Callable[[], None] = lambda: None  # `down`: serve stops the server
        # The key of local commands (state/run_record.py), valid only where keys are required.
        self.admin_key: ApiKey | None = None
        # The Node as `run` started with it (serve sets it): the settings fixed until a restart
        # and the address it listens on (no keys is refused live on a non-loopback one).
        self.node_started: NodeSpec | None = None
        self.fixed: tuple[str, ...] = FIXED_AT_START
        self.listen_host = "127.0.0.1"
        self._keys: list[ApiKeySpec] = []
        self._keys_refused: str | None = None
        self._restart_needed: list[str] = []
        self._followed: Desired | None = None  # the desired state whose Node was looked at
        self.engine.on_change.append(self._follow_node)

    def started_with(self, node: NodeSpec, host: str, listen_fixed_by_flag: bool) -> None:
        """What ``run`` started with (its keys are in force until the first pass)."""
        self.node_started = node
        self.listen_host = host
        self._keys = list(node.api_keys)
        if listen_fixed_by_flag:  # --listen: the Node's listen is not what was bound
            self.fixed = tuple(f for f in FIXED_AT_START if f != "listen")

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Continue idle clocks from the database, run the first pass, start the loop."""
        store = self.controller.store
        self.activity.last_used.update(await store.last_used())
        for name in await store.model_states():  # a new process knows nothing of the old phases
            await store.clear_model_state(name)
        await self.engine.overrides.restore()
        await self._start_ops()
        self._tasks = [
            asyncio.create_task(self.loop.run(), name="reconcile loop"),
            asyncio.create_task(self.loop.watch(), name="manifest watcher"),
            asyncio.create_task(self.loop.watch_docker(), name="docker events"),
            asyncio.create_task(self._flush_forever(), name="request log"),
            asyncio.create_task(self._watch_git(), name="git state"),
        ]
        await self.engine.wait_first_pass()

    async def _start_ops(self) -> None:
        """Webhooks and pull mode, from the directory's Node manifest, before the first pass."""
        controller = self.controller
        try:  # only the Node is needed: no revisions resolved, nothing remembered
            manifests = await asyncio.to_thread(
                manifest_set.load, controller.manifest_dir, await controller.store.documents()
            )
        except FileNotFoundError:
            return
        node_name = manifests.node_doc.name if manifests.node_doc else None
        self.notifications.configure(manifests.node.notify, node_name)
        if manifests.node.git is None:
            return
        self.pull = PullMode(
            controller.source, controller.store, controller.state_dir, manifests.node.git
        )
        self.pull.on_revision.append(lambda: self.loop.trigger(reload=True))
        if self.pull.use_checked_out() is None:
            await self.pull.fetch()  # nothing to reconcile from until the first fetch
            self.pull.start()
        else:
            self.pull.start(now=True)  # serve the last good revision at once, then fetch

    def _configure_notifications(self) -> None:
        manifests = self.engine.manifests
        if manifests is not None:
            name = manifests.node_doc.name if manifests.node_doc else None
            self.notifications.configure(manifests.node.notify, name)

    async def _watch_git(self) -> None:
        """A commit (or checkout) that changes no file under the directory still makes a new
        generation: look at the work tree every resync and reload when its state moved."""

        def key(info: GitInfo | None) -> tuple[object, ...]:
            return (info.sha, info.dirty_files) if info else ()

        while True:
            desired = self.engine.desired
            await asyncio.sleep(desired.node.resync if desired else 1.0)
            if self.pull is not None or self.engine.passes == 0:
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
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._flush()
        await self.notifications.aclose()
        await self.controller.close()

    # --- routes -----------------------------------------------------------------------------

    def _rebuild_routes(self) -> None:
        engine = self.engine
        desired = engine.desired
        if desired is None:
            return
        routes: dict[str, ModelRoute] = {}
        listing = []
        nodes = {i.model: i.node for i in engine.actual if i.node and i.state != "exited"}
        for name, model in desired.models.items():
            route = ModelRoute(
                name=name,
                aliases=tuple(model.spec.aliases),
                phase=engine.phase_of(name).phase,
                priority=PRIORITIES[model.spec.priority],
                max_concurrency=model.spec.max_concurrency,
                startup_timeout=model.spec.startup_timeout,
                request_timeout=model.spec.request_timeout or None,
                idle_timeout=model.spec.idle_timeout or None,
                endpoint=engine.ready.get(name),
                created=self._created.setdefault(name, int(time.time())),
                labels=dict(model.labels),
                node=nodes.get(name, ""),
                loading_as_reasoning=desired.node.proxy.loading_as_reasoning
                if model.spec.loading_as_reasoning is None
                else model.spec.loading_as_reasoning,
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
        engine = self.engine
        endpoint = engine.ready.get(model)
        if endpoint is not None:
            return endpoint
        desired = engine.desired
        if desired is None or model not in desired.models:
            raise Unavailable(f"model {model!r} is not served here", status=404)
        wanted = desired.models[model]
        if wanted.spec.suspend:
            raise Unavailable(f"{model} is suspended and not running", retry_after=60)
        down = engine.unavailable.get(wanted.runtime)
        if down is not None:
            raise Unavailable(f"{model} cannot start: runtime unavailable: {down}", 503, 5.0)
        failure = engine.backoff.get(model, wanted.spec_hash)
        if failure is not None and failure.permanent:  # retrying cannot help: say so at once
            raise Unavailable(f"{model} failed: {failure.reason} (fix the manifest)", 503, 60.0)
        state = engine.phase_of(model)
        now = time.time()
        if state.phase == "Failed" and state.retry_at and state.retry_at > now:
            raise Unavailable(
                f"{model} failed: {state.reason}; next start in {state.retry_at - now:.0f}s",
                503,
                state.retry_at - now,
            )
        try:
            return await engine.wake(model, wanted.spec.startup_timeout + WAKE_SLACK)
        except WeightsUnavailable as exc:
            retry = max(1.0, (engine.phase_of(model).retry_at or 0) - time.time())
            raise Unavailable(f"{model}: weights unavailable: {exc}", 503, retry) from None
        except WakeFailed as exc:
            retry = max(1.0, (engine.phase_of(model).retry_at or time.time()) - time.time())
            raise Unavailable(f"{model} failed to start: {exc}", 502, retry) from None
        except WakeUnschedulable as exc:
            raise Unavailable(f"{model} cannot be placed: {exc}", 503, 30.0) from None
        except TimeoutError:
            if model in engine.downloads:
                raise Unavailable(
                    f"{model} is still downloading its weights; retry later", 503, 30.0
                ) from None
            raise Unavailable(
                f"{model} did not become ready within {wanted.spec.startup_timeout:.0f}s"
                " (startupTimeout)",
                503,
                10.0,
            ) from None

    def begin_request(self, model: str) -> None:
        self.activity.begin(model)

    def end_request(self, model: str) -> None:
        if self.activity.end(model) == 0:
            engine = self.engine
            if engine.waiting_for_room:
                self.loop.trigger()  # this model may now be evicted for one that waits
            desired = engine.desired
            wanted = desired.models.get(model) if desired else None
            if wanted is not None and wanted.spec.stay_warm == 0:
                self.loop.trigger()  # stayWarm 0: unload right after use
            elif wanted is not None and not wanted.pinned:
                self.loop.rearm(time.time() + wanted.spec.stay_warm)  # idle from now

    def stay_warm(self, model: str, seconds: float) -> None:
        """``x_stay_warm``: keep ``model`` loaded ``seconds`` from now (capped by
        ``Node.proxy.maxStayWarm``), however short its stayWarm."""
        desired = self.engine.desired
        wanted = desired.models.get(model) if desired else None
        if wanted is None or desired is None or seconds <= 0:
            return
        until = time.time() + min(seconds, desired.node.proxy.max_stay_warm)
        self.activity.keep_warm(model, until)
        self.loop.rearm(until)

    def backend_failed(self, model: str, reason: str) -> None:
        log.warning("backend failed: %s: %s", model, reason)
        self.engine.backend_failed(model, reason)
        self.engine.event("BackendFailed", reason, model)

    def request_timed_out(self, model: str, message: str) -> None:
        self.engine.event("Timeout", message, model)

    def record_request(self, record: RequestRecord) -> None:
        self._records.append(record)

    def api_keys(self) -> list[ApiKey]:
        keys = [ApiKey(k.name, k.sha256, tuple(k.models)) for k in self._keys]
        if keys and self.admin_key:  # (no keys: open on loopback, the CLI needs none)
            keys.append(self.admin_key)
        return keys

    def _follow_node(self) -> None:
        """A new desired state: its Node's API keys (unless that would open a non-loopback
        listener), and which of its changes need a restart (see node_settings.py)."""
        desired = self.engine.desired
        if desired is None or desired is self._followed:
            return
        self._followed = desired
        node = desired.node
        self._keys, refused = keys_in_force(
            is_loopback(self.listen_host), self._keys, node.api_keys, self.listen_host
        )
        if refused is not None and refused != self._keys_refused:
            log.error("%s", refused)
            self.engine.event("ApiKeysKept", refused)
        self._keys_refused = refused
        if self.node_started is None:
            return
        changes = needs_restart(self.node_started, node, self.fixed)
        if changes and changes != self._restart_needed:
            warning = restart_warning(changes)
            log.warning("%s", warning)
            self.engine.event("RestartNeeded", str(warning))
        self._restart_needed = changes

    # --- admin ------------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        return readiness(self.engine)

    def gpu_snapshot(self) -> tuple[Inventory, list[Claim]]:
        """The GPUs as of the last pass, and the claims of the models that run or start."""
        return self.engine.inventory, self.engine.local_claims()

    async def snapshot(self) -> Snapshot:
        """What every view shows (``/api/status``, ``modelplane status``, the dashboard)."""
        return self.snapshot_now(await self.controller.store.last_generation())

    def snapshot_now(self, generation: Generation | None = None) -> Snapshot:
        """The same, without the applied generation's record (a database read): for the
        synchronous readers (the systemd status line)."""
        return take_snapshot(
            self.engine,
            generation=generation,
            warnings=tuple(w for w in self._warnings() if w),
            extra=self._ops_status(),
        )

    async def status(self) -> dict[str, Any]:
        return (await self.snapshot()).as_json()

    def _warnings(self) -> list[str | None]:
        node = [self._keys_refused, restart_warning(self._restart_needed)]
        if self.pull is not None:
            return [self.pull.warning(), *node]
        return [dirty_warning(self.controller.git), *node]

    def _ops_status(self) -> dict[str, Any]:
        """Where the manifests in force come from (pull mode), and the webhooks' deliveries."""
        notifier = self.notifications.notifier
        return {
            "git": self.pull.status() if self.pull else None,
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

    async def history(self, limit: int = 20) -> list[dict[str, Any]]:
        return history(await self.controller.store.generations(limit=limit + 1), limit)

    async def logs(self, model: str, lines: int = 50) -> str:
        desired = self.engine.desired
        wanted = desired.models.get(model) if desired else None
        runtime = wanted.runtime if wanted else "process"
        return await self.controller.runtimes.get(runtime).logs(model, lines)

    async def follow_logs(self, model: str, lines: int = 50) -> AsyncIterator[str]:
        desired = self.engine.desired
        wanted = desired.models.get(model) if desired else None
        runtime = self.controller.runtimes.get(wanted.runtime if wanted else "process")
        async for line in follow_logs(runtime, model, lines, until=lambda: self._closing):
            yield line

    async def requests(
        self,
        model: str | None = None,
        client: str | None = None,
        status: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        await self._flush()  # the newest requests too, not only those of the last batch
        rows = await self.controller.store.requests(
            model=model, client=client, status=status, limit=limit
        )
        return [r.as_dict() for r in rows]

    async def reconcile(self) -> dict[str, Any]:
        if self.pull is not None:
            await self.pull.fetch()  # a failure is reported; the last good revision stays
        self.loop.trigger(reload=True)
        await self.engine.pass_once()
        engine = self.engine
        return {
            "generation": engine.generation,
            "errors": [str(e) for e in engine.manifests.errors] if engine.manifests else [],
            "busy": sorted(engine.busy),
            "git": self.pull.status() if self.pull else None,
        }

    async def load(self, model: str) -> None:
        """Start ``model`` and keep it loaded until unloaded or its manifest changes (see
        :mod:`reconciler.control.overrides`)."""
        engine = self.engine
        desired = engine.desired
        if desired is None or model not in desired.models or engine.manifests is None:
            raise Unavailable(f"model {model!r} is not served here", status=404)
        wanted = desired.models[model]
        if wanted.spec.suspend:
            raise Refused(f"{model} is suspended (spec.suspend: true): it is left as it is")
        if not wanted.pinned:  # a pin holds it already
            digest = manifest_digests(engine.manifests, desired)[model]
            await engine.overrides.hold(model, digest)
        self.activity.touch(model)
        await self.wake(model)

    async def unload(self, model: str) -> None:
        engine = self.engine
        desired = engine.desired
        if desired is None or model not in desired.models:
            raise Unavailable(f"model {model!r} is not served here", status=404)
        if desired.models[model].spec.suspend:
            raise Refused(f"{model} is suspended (spec.suspend: true): it is left as it is")
        if desired.models[model].pinned:
            raise Refused(f"{model} is pinned: it is never unloaded (set pin: false to allow)")
        await engine.overrides.release(model, "unloaded by hand")
        self.activity.wanted.discard(model)
        instance = next(
            (i for i in engine.actual if i.model == model and i.state == "running"), None
        )
        if instance is None:
            return
        action = Action("unload", model, "unloaded by hand", instance)
        task = engine.dispatch(action, time.time(), manual=True) or engine.busy.get(model)
        if task is not None:
            await asyncio.shield(task)

    async def down(self) -> dict[str, Any]:
        """``modelplane down`` while the service runs: stop reconciling, stop every managed
        backend, then end the service (a pass must not start them again)."""
        await self.loop.stop()
        controller = self.controller
        instances, unavailable = await controller.managed_backends(self.engine.desired)
        stopped = []
        for inst in instances:
            await controller.runtimes.get(inst.runtime).stop(inst)
            await controller.store.add_event("Stopped", "stopped by modelplane down", inst.model)
            entry = {"model": inst.model, "runtime": inst.runtime, "id": inst.ident}
            stopped.append(entry | {"node": inst.node})
        self.stopped_all = not unavailable
        asyncio.get_running_loop().call_later(0.2, self.on_exit_request)
        return {"stopped": stopped, "unavailable": unavailable}

    def left_running(self) -> list[str]:
        """The backends still running as the service stops (the next ``run`` adopts them)."""
        if self.stopped_all:
            return []
        return sorted(i.model for i in self.engine.actual if i.managed and i.state != "exited")

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
