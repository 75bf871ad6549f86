"""The CLI's use of the engine, for tests that drive a Controller directly: ``apply``, ``plan``
and the rows of an offline ``status``."""

from __future__ import annotations

from reconciler.control.controller import Controller
from reconciler.control.engine import ApplyResult, Engine, PassReport
from reconciler.control.snapshot import ModelView, take_snapshot


async def apply(controller: Controller, allow_empty: bool = False) -> ApplyResult:
    engine = await Engine.offline(controller, allow_empty=allow_empty)
    return await engine.apply()


async def plan(controller: Controller, allow_empty: bool = False) -> PassReport:
    engine = await Engine.offline(controller, allow_empty=allow_empty)
    return await engine.plan()


async def status(controller: Controller) -> list[ModelView]:
    engine = await Engine.offline(controller, online=False)
    await engine.plan()
    return list(take_snapshot(engine).models)
