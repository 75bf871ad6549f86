"""What ``modelplane plan`` shows: each action with its cause and, for starts, where it goes on
the GPUs, or why it waits or cannot run; ``--json`` adds each model's VRAM estimate. Pure."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from reconciler.control.engine import STARTS, Engine, PassReport
from reconciler.gpus.inventory import inventory_json
from reconciler.gpus.vram import Estimate
from reconciler.planning.planner import Action


def estimate_json(estimate: Estimate | str | None) -> dict[str, Any]:
    if not isinstance(estimate, Estimate):
        return {"error": estimate or "no estimate"}
    return {
        "describe": estimate.describe(),
        "bytes": estimate.bytes,
        "source": estimate.source,
        "perGpu": estimate.per_gpu,
        "fraction": estimate.fraction,
        "parts": dict(estimate.parts or {}),
        "notes": list(estimate.notes),
    }


def placement_text(action: Action, report: PassReport, has_gpus: bool) -> str:
    """What ``plan`` appends to a start's cause: where it goes, or why it waits or cannot."""
    sched = report.schedule
    if action.kind not in STARTS:
        return ""
    if action.model in sched.unschedulable:
        return f"UNSCHEDULABLE: {sched.unschedulable[action.model]}"
    if action.model in sched.waiting:
        return f"after evictions: {sched.waiting[action.model]}"
    if action.node is not None:  # on a Ray node: the reason names the node and the GPUs
        why = sched.placed.get(action.model, f"node {action.node.name}")
        return f"{why}; num_gpus {action.node.num_gpus:g}"
    if action.placement is None or not has_gpus:
        return ""
    gpus, args = action.placement.gpus, action.placement.args
    where = f"GPU {','.join(map(str, gpus))}" if gpus else "no GPU"
    why = sched.placed.get(action.model, "")
    extra = f" {' '.join(args)}" if args else ""
    return f"{where}{extra} ({why})" if why else f"{where}{extra}"


def actions_table(report: PassReport, has_gpus: bool) -> Table:
    table = Table(box=None, pad_edge=False)
    for column in ("ACTION", "MODEL", "CAUSE"):
        table.add_column(column)
    for action in [*report.actions, *report.deferred]:
        where = placement_text(action, report, has_gpus)
        table.add_row(
            action.kind, action.model, f"{action.cause}; {where}" if where else action.cause
        )
    return table


def plan_json(engine: Engine, report: PassReport) -> dict[str, Any]:
    """Starts that wait for evictions or cannot be placed are listed too (apply would try
    them); ``gpus`` says where each start goes, or why it waits or cannot."""
    assert engine.desired is not None and engine.manifests is not None
    sched = report.schedule
    placements = {}
    for action in sched.actions:
        if action.kind in STARTS and action.placement is not None:
            gpus, args = action.placement.gpus, action.placement.args
            placements[action.model] = {
                "gpus": list(gpus) or None,
                "args": list(args),
                "claims": [
                    {"gpu": c.gpu, "bytes": c.bytes} for c in sched.claims.get(action.model, ())
                ],
                "reason": sched.placed.get(action.model, ""),
            }
            if action.node is not None:  # a Ray node: which, and what Ray is asked for
                placements[action.model] |= {
                    "node": action.node.name,
                    "nodeId": action.node.node_id,
                    "numGpus": action.node.num_gpus,
                }
    claims = engine.local_claims(sched.claims)
    return {
        "actions": [
            {"kind": a.kind, "model": a.model, "cause": a.cause}
            for a in [*report.actions, *report.deferred]
        ],
        "errors": [str(e) for e in engine.manifests.errors],
        "refused": report.refused,
        "unavailable": engine.unavailable,
        "weightsProblems": engine.weights_problems,
        "models": {
            name: {
                "specHash": m.spec_hash,
                "runtime": m.runtime,
                "pinned": m.pinned,
                "estimate": estimate_json(engine.estimates.get(name)),
            }
            for name, m in engine.desired.models.items()
        },
        "gpus": {
            "inventory": inventory_json(engine.inventory, claims, engine.desired.node.vram_reserve),
            "placements": placements,
            "waiting": dict(sched.waiting),
            "unschedulable": dict(sched.unschedulable),
            "pins": engine.pins,
        },
    }
