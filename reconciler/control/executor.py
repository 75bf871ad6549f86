"""Carry out a plan: start, stop, recreate and unload backends through the runtimes.

Actions for different models run concurrently; the actions of one model run in order, and a
recreate stops the old instance before the new one starts (VRAM cannot hold both). Every step
is an event in the state database, with the action's cause.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

from reconciler.planning.desired import Desired, DesiredModel
from reconciler.planning.launch import launch_spec
from reconciler.planning.outcome import Outcome
from reconciler.planning.planner import Action, Placement
from reconciler.runtimes import RuntimeSet
from reconciler.runtimes.base import Instance, LaunchSpec, Prepare, StartError
from reconciler.state.store import Store


def explicit_placement(model: DesiredModel) -> Placement:
    """For a start the GPU scheduler did not place: explicit indices as given, else no GPU."""
    gpus = model.spec.gpus
    return Placement.as_named(gpus, "explicit GPUs") if isinstance(gpus, list) else Placement()


class Executor:
    def __init__(
        self,
        runtimes: RuntimeSet,
        store: Store,
        resolve_path: Callable[[DesiredModel], str | None] = lambda model: None,
        grace: float = 10.0,
        remote_prepare: Callable[[DesiredModel], Prepare | None] = lambda model: None,
    ) -> None:
        self.runtimes = runtimes
        self.store = store
        self.resolve_path = resolve_path  # weights in this box's cache
        self.remote_prepare = remote_prepare  # weights fetched where a Ray backend runs
        self.grace = grace

    async def run(self, actions: list[Action], desired: Desired, generation: int) -> list[Outcome]:
        by_model: dict[str, list[Action]] = {}
        for action in actions:
            by_model.setdefault(action.model, []).append(action)
        groups = await asyncio.gather(
            *(self._run_model(acts, desired, generation) for acts in by_model.values())
        )
        return [outcome for group in groups for outcome in group]

    async def _run_model(
        self, actions: list[Action], desired: Desired, generation: int
    ) -> list[Outcome]:
        outcomes = []
        for action in actions:
            outcome = await self.execute(action, desired, generation)
            outcomes.append(outcome)
            if not outcome.ok:
                break
        return outcomes

    async def execute(self, action: Action, desired: Desired, generation: int) -> Outcome:
        if action.kind in ("stop", "unload", "evict"):
            assert action.instance is not None
            return await self._stop(action, action.instance)
        model = desired.models[action.model]
        if action.instance is not None:
            stopped = await self._stop(action, action.instance, quiet=action.kind == "start")
            if not stopped.ok:
                return stopped
        return await self._start(action, model, generation)

    async def _stop(self, action: Action, instance: Instance, quiet: bool = False) -> Outcome:
        runtime = self.runtimes.get(instance.runtime)
        try:
            await runtime.stop(instance, grace=self.grace)
        except Exception as exc:  # a runtime error must not abort the other models' actions
            await self.event("Failed", f"{action}: could not stop: {exc}", action.model)
            return Outcome(action, False, f"could not stop: {exc}")
        if not quiet:
            kind = {"unload": "Unloaded", "evict": "Evicted"}.get(action.kind, "Stopped")
            await self.event(kind, str(action), action.model)
        return Outcome(action, True)

    async def _start(self, action: Action, model: DesiredModel, generation: int) -> Outcome:
        began = time.monotonic()
        try:
            spec = self._launch(action, model, generation)
        except ValueError as exc:
            return await self._failed(action, str(exc))
        where = f" on node {action.node.name}" if action.node else ""
        await self.event("Starting", f"{action}{where}", model.name)
        try:
            instance = await self.runtimes.get(model.runtime).start(spec)
        except StartError as exc:
            return await self._failed(action, str(exc), exc.permanent)
        except Exception as exc:  # runtime unavailable, docker API errors, ...
            return await self._failed(action, f"{type(exc).__name__}: {exc}")
        took = time.monotonic() - began
        where = f" (node {instance.node})" if instance.node else ""
        ready = f"{model.name} ready on {instance.endpoint}{where} in {took:.1f}s"
        await self.event("Started", ready, model.name)
        return Outcome(action, True, instance=instance)

    def _launch(self, action: Action, model: DesiredModel, generation: int) -> LaunchSpec:
        """The launch of a start: on this box with the weights of this box's cache; on a Ray
        node with the node placement chose, fetching the weights there."""
        placement = action.placement or explicit_placement(model)
        gpus, args = placement.gpus or None, placement.args
        if model.runtime != "ray":
            return launch_spec(model, generation, gpus, self.resolve_path(model), args)
        spec = launch_spec(model, generation, gpus, None, args, remote=True)
        return replace(spec, node=action.node, prepare=self.remote_prepare(model))

    async def _failed(self, action: Action, message: str, permanent: bool = False) -> Outcome:
        await self.event("Failed", f"{action}: {message}", action.model)
        return Outcome(action, False, message, permanent=permanent)

    async def event(self, kind: str, message: str, model: str | None = None) -> None:
        await self.store.add_event(kind, message, model)
