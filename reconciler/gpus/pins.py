"""Pinned models that cannot all fit the GPUs a static ``Node.gpus`` lists: a property of the
manifests themselves, so ``validate`` reports it (with ``gpus: auto`` it depends on the box, and
each pass checks it)."""

from __future__ import annotations

from reconciler.manifests.loader import ManifestError
from reconciler.manifests.manifest_set import ManifestSet
from reconciler.planning.desired import build_desired

from .estimates import estimate_all
from .inventory import read_inventory
from .scheduler import pins_problem


def static_pins_problem(manifests: ManifestSet) -> ManifestError | None:
    """The problem as an error at the Node document, or None when they fit (or GPUs are auto)."""
    node, where = manifests.node, manifests.node_doc
    if not isinstance(node.gpus, list) or where is None:
        return None
    desired = build_desired(manifests)
    inventory = read_inventory(node.gpus)
    estimates = estimate_all(desired, lambda model: None, None, bool(inventory.gpus))
    problem = pins_problem(desired, inventory.gpus, node.vram_reserve, estimates)
    if problem is None:
        return None
    return ManifestError(where.path, where.line, where.col, where.kind, where.name, problem)
