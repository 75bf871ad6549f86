"""Builders for desired and actual state without files or processes (planner and status tests)."""

from __future__ import annotations

import itertools
from typing import Any

from reconciler.manifests.engines import BUILTIN_ENGINES
from reconciler.manifests.schema import ModelSpec
from reconciler.planning.desired import Desired, DesiredModel, effective_spec, spec_hash
from reconciler.planning.planner import Action
from reconciler.runtimes.base import Instance, managed_labels

_idents = itertools.count(1000)


def desired_model(name: str, **spec: Any) -> DesiredModel:
    """A desired model on a built-in engine; keyword arguments are spec fields (snake_case)."""
    parsed = ModelSpec.model_validate(
        {"source": {"path": f"/srv/{name}.gguf"}, "engine": "llama-server", **spec}
    )
    engine = BUILTIN_ENGINES[parsed.engine]
    runtime = parsed.runtime or "process"
    effective = effective_spec(parsed, parsed.engine, engine, runtime)
    return DesiredModel(
        name, parsed, engine, runtime, effective, spec_hash(effective), where=f"{name}.yaml:1:1"
    )


def desired(*models: DesiredModel) -> Desired:
    return Desired(models={m.name: m for m in models}, empty=not models)


def instance(
    model: str | DesiredModel,
    state: str = "running",
    *,
    managed: bool = True,
    started_at: float = 0.0,
    spec: dict[str, Any] | None = None,
    hash_: str | None = None,
    exit_reason: str | None = None,
) -> Instance:
    """An instance as a runtime would list it; by default it matches the desired model's spec."""
    name = model if isinstance(model, str) else model.name
    if isinstance(model, DesiredModel):
        hash_ = hash_ or model.spec_hash
        spec = spec if spec is not None else dict(model.effective)
    labels = managed_labels(name, hash_ or "0ld0ld0ld0ld", 1) if managed else {"app": name}
    return Instance(
        model=name,
        runtime="process",
        ident=str(next(_idents)),
        state=state,  # type: ignore[arg-type]
        labels=labels,
        endpoint="http://127.0.0.1:1",
        spec=spec,
        started_at=started_at,
        exit_reason=exit_reason if state != "exited" else exit_reason or "exited with code 1",
    )


def simulate(
    actions: list[Action], want: Desired, actual: list[Instance], now: float
) -> list[Instance]:
    """Actual state after the actions succeed, as a runtime would then list it."""
    result = list(actual)
    for action in actions:
        if action.instance is not None:
            result.remove(action.instance)  # raises if the plan named an instance twice
        if action.kind in ("start", "recreate"):
            model = want.models[action.model]
            result.append(instance(model, started_at=now))
    return result
