"""What makes ``modelplane run`` reconcile: triggers and timers around the :class:`Engine`.

A pass runs on a manifest change (watchfiles, debounced), at the periodic resync (drift), on a
wake request, at the next stay-warm expiry, when an action ends, when a runtime's events say a
backend died (docker), and on ``POST /api/reconcile``. Between passes the loop sleeps until the
earliest of those deadlines; what a pass does is the engine's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import watchfiles

from .engine import Engine

log = logging.getLogger("modelplane.loop")

DEBOUNCE_MS = 300
UNAVAILABLE_RECHECK = 2.0  # seconds between passes while a runtime (docker) is unreachable


class ReconcileLoop:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        engine.request_pass = self.trigger
        self._wakeup = asyncio.Event()
        self._pass_wanted = False
        self._sleeping_until = 0.0  # when the loop wakes up for the next pass
        self._stopping = asyncio.Event()

    # --- triggers ---------------------------------------------------------------------------

    def trigger(self, reload: bool = False) -> None:
        """Ask for a pass soon (``reload``: re-read the manifests first)."""
        self.engine.reload = self.engine.reload or reload
        self._pass_wanted = True
        self._wakeup.set()

    def rearm(self, due: float) -> None:
        """A stay-warm expiry is now due at ``due`` (a request ended): make the loop wake up
        then if it sleeps longer, without asking for a pass now."""
        if due < self._sleeping_until:
            self._wakeup.set()

    async def run(self) -> None:
        """Passes until :meth:`stop`: on a trigger, at the next resync or stay-warm expiry."""
        while not self._stopping.is_set():
            self._pass_wanted = False
            self._wakeup.clear()
            try:
                await self.engine.pass_once()
            except Exception:  # a pass must never kill the service; the next one retries
                log.exception("reconcile pass failed")
            await self._sleep_until_due()

    async def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()
        await self.engine.stop()

    async def _sleep_until_due(self) -> None:
        """Until a trigger or the next deadline; a :meth:`rearm` only recomputes the deadline."""
        while not (self._pass_wanted or self._stopping.is_set()):
            self._sleeping_until = self.next_deadline()
            timeout = max(0.0, self._sleeping_until - time.time())
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return
            self._wakeup.clear()

    def next_deadline(self) -> float:
        """The earliest of: the resync, a stay-warm expiry, a failed model's retry time, and the
        quick re-checks while GPU memory is awaited or a runtime is unreachable."""
        engine = self.engine
        now = time.time()
        desired = engine.desired
        deadline = now + (desired.node.resync if desired else 30.0)
        if desired is None:
            return deadline
        for name in engine.ready:
            due = engine.unload_due(name)
            if due is not None and due + 0.05 > engine.last_pass_at:  # (one before: seen by it)
                deadline = min(deadline, due + 0.05)
        if engine.broken:  # a backend the proxy saw break is not gone yet: look again soon
            deadline = min(deadline, now + 0.5)
        retries = [s.retry_at for s in engine.phases.values() if s.retry_at and s.retry_at > now]
        if engine.waiting_gpu:
            retries.append(now + 0.5)  # evictions settling: NVML may show the memory free
        elif engine.unschedulable_since:  # the end of a request or an action triggers a pass;
            retries.append(now + 2.0)  # this catches memory that others' processes freed
        if engine.unavailable:
            retries.append(now + UNAVAILABLE_RECHECK)  # notice a daemon's return soon
        return min([deadline, *retries])

    # --- watchers ---------------------------------------------------------------------------

    async def watch(self) -> None:
        """Re-read the manifests when any file under the directory changes (debounced)."""
        directory = self.engine.controller.manifest_dir
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

        await self.engine.wait_first_pass()  # the manifests say whether docker is used at all
        while not self._stopping.is_set():
            desired = self.engine.desired
            uses_docker = desired is not None and (
                desired.node.runtime == "docker"
                or any(m.runtime == "docker" for m in desired.models.values())
            )
            if desired is None or not uses_docker:
                await asyncio.sleep(2.0)
                continue
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
