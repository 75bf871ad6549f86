"""Manual overrides: a model loaded by hand stays loaded until unloaded or its manifest changes.

What ``POST /api/models/{name}/load`` and ``/unload`` mean (issue 3 item 4, issue 7 item 3):

- ``load`` of an unpinned model starts it and *holds* it like a pin: no stay-warm unload, restarted
  after a crash, never evicted for another model. The hold is remembered in the state database
  (it survives a resync and a restart of modelplane) and ends with ``unload`` or at the next change
  of the model's manifest: any edit of its document (``stayWarm`` and ``pin`` included) or of the
  Engine it runs on. From then on the manifest alone decides again.
- ``unload`` of an unpinned model ends a hold and unloads it now (requests in flight finish first).
  Nothing more is remembered: the model is asleep as usual and the next request wakes it, as
  llama-swap and Ollama users expect.
- ``unload`` of a pinned model is refused (a pin means "always running"); to take a pinned model
  down, set ``pin: false`` or ``suspend: true`` in its manifest. ``load`` of a pinned model just
  wakes it: the pin holds it already, so no override is recorded.
- a suspended model (``spec.suspend: true``) is frozen as it is: ``load`` and ``unload`` are
  refused until the manifest lifts the suspension.

:func:`manifest_digests` and :func:`ended` are pure; :class:`Overrides` keeps them in the store.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any

from reconciler.manifests.manifest_set import ManifestSet
from reconciler.planning.desired import Desired
from reconciler.state.store import Override, Store

LOAD = "load"


def manifest_digest(body: Mapping[str, Any], engine: Any) -> str:
    """What "the model's manifest changed" compares: its document and the Engine it runs on
    (not a hub branch that moved: that recreates the model, but it is no edit of a manifest)."""
    payload = json.dumps([body, engine], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def manifest_digests(manifests: ManifestSet, desired: Desired) -> dict[str, str]:
    """The digest of every model in force (an invalid edit keeps the last valid version's)."""
    return {
        name: manifest_digest(item.body, desired.models[name].engine.model_dump(mode="json"))
        for name, item in manifests.models.items()
        if name in desired.models
    }


def ended(overrides: Mapping[str, Override], digests: Mapping[str, str]) -> dict[str, str]:
    """The overrides that no longer apply, with the reason. Pure."""
    gone = {}
    for name, override in overrides.items():
        digest = digests.get(name)
        if digest is None:
            gone[name] = "its manifest was removed"
        elif digest != override.manifest:
            gone[name] = "its manifest changed"
    return gone


def describe(override: Override) -> str:
    """The line ``status`` shows for an override in force."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(override.time))
    return f"loaded by hand at {when}: kept loaded until unloaded or its manifest changes"


class Overrides:
    """The overrides in force, mirrored from the state database."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.active: dict[str, Override] = {}

    async def restore(self) -> None:
        self.active = await self.store.overrides()

    @property
    def held(self) -> set[str]:
        return {name for name, o in self.active.items() if o.action == LOAD}

    def descriptions(self) -> dict[str, str]:
        return {name: describe(o) for name, o in self.active.items()}

    async def hold(self, model: str, digest: str) -> None:
        current = self.active.get(model)
        if current is not None and current.action == LOAD and current.manifest == digest:
            return  # held already
        self.active[model] = await self.store.set_override(model, LOAD, digest)
        await self.store.add_event(
            "Override", f"{model} loaded by hand: kept loaded until unloaded", model
        )

    async def release(self, model: str, why: str) -> None:
        if self.active.pop(model, None) is None:
            return
        await self.store.clear_override(model)
        await self.store.add_event("OverrideEnded", f"load by hand ended: {why}", model)

    def forget_ended(self, digests: Mapping[str, str]) -> None:
        """Drop the overrides that ended from this view only (a dry run writes nothing)."""
        for name in ended(self.active, digests):
            del self.active[name]

    async def check(self, digests: Mapping[str, str]) -> None:
        """End the overrides whose model's manifest changed or is gone."""
        for name, why in ended(self.active, digests).items():
            await self.release(name, why)
