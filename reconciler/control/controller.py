"""The engine's edges: where the manifests come from, the database, the runtimes, the weights
cache, and the executor that carries actions out.

A :class:`Controller` is opened once per process (``modelplane run``, or one CLI command) and
handed to the :class:`~reconciler.control.engine.Engine`, which is what reconciles.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from reconciler.gitops.source import ManifestSource
from reconciler.gitops.worktree import GitInfo, changes_between
from reconciler.gpus.inventory import probe_gpus
from reconciler.manifests import manifest_set
from reconciler.manifests.loader import ManifestError
from reconciler.manifests.manifest_set import ManifestSet
from reconciler.manifests.schema import NodeSpec
from reconciler.planning.desired import Desired, build_desired
from reconciler.runtimes import RuntimeSet
from reconciler.runtimes.base import Instance
from reconciler.runtimes.docker_pulls import PullEvents
from reconciler.state import paths
from reconciler.state.store import Store
from reconciler.weights.manager import WeightsManager

from .executor import Executor


class Controller:
    def __init__(self, manifest_dir: Path, store: Store, runtimes: RuntimeSet) -> None:
        # Absolute, so the paths remembered with the last valid documents name the same files
        # whichever folder the next modelplane runs from (a broken file's fallbacks match by path).
        self.source = ManifestSource(manifest_dir.absolute())
        self.store = store
        self.runtimes = runtimes
        runtimes.on_pull = PullEvents(store.add_event)  # image pulls show in the event log
        self.weights = WeightsManager(store)
        self.executor = Executor(
            runtimes,
            store,
            resolve_path=self.weights.resolved_path,
            remote_prepare=self.weights.remote_prepare,
        )
        self.state_dir = runtimes.state_dir
        self.git: GitInfo | None = None  # where the current generation's manifests came from

    @property
    def manifest_dir(self) -> Path:
        return self.source.directory

    @classmethod
    async def open(cls, manifest_dir: Path, state_dir: Path | None = None) -> Controller:
        """Find the state directory (the Node manifest may name it) and open the database."""
        try:
            node = manifest_set.load(manifest_dir).node
        except FileNotFoundError:
            node = NodeSpec()
        state_dir = state_dir or paths.state_dir(node)
        store = await Store.open(state_dir / "modelplane.db")
        runtimes = RuntimeSet(state_dir, node.docker_host, node.ray, gpu_probe=probe_gpus)
        return cls(manifest_dir, store, runtimes)

    async def close(self) -> None:
        await self.runtimes.close()
        await self.store.close()

    async def __aenter__(self) -> Controller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def load(self, online: bool = True, persist: bool = True) -> tuple[ManifestSet, Desired]:
        """Manifests in force (falling back to last valid versions) and the desired state.

        Hub sources are resolved to commits (``online``: ask the hub, else the last known
        commits; ``persist``: remember them), so a moved branch is a new spec hash.
        Raises ``FileNotFoundError`` when the directory itself is missing.

        The files are read and validated in a worker thread: a large or hostile file (bounded
        by the loader's limits) costs the proxy's event loop nothing.
        """
        manifests = await asyncio.to_thread(
            manifest_set.load,
            self.source.directory,
            await self.store.documents(),
            extra_roots=self.source.extra_roots,
        )
        return manifests, await self._desired(manifests, online, persist)

    async def load_last(
        self, reason: ManifestError, online: bool = True, persist: bool = True
    ) -> tuple[ManifestSet, Desired]:
        """The last valid set from the database, every document Stale with ``reason`` (the
        directory holds no Model: the prune guard keeps what was in force)."""
        manifests = manifest_set.last_set(await self.store.documents(), reason)
        return manifests, await self._desired(manifests, online, persist)

    async def _desired(self, manifests: ManifestSet, online: bool, persist: bool) -> Desired:
        self.weights.configure(manifests.node)
        self.runtimes.ray = manifests.node.ray  # the cluster as the Node manifest says now
        revisions = await self.weights.resolve_all(manifests, online=online, persist=persist)
        return build_desired(manifests, revisions)

    async def observe(self, desired: Desired) -> tuple[list[Instance], dict[str, str]]:
        """What the runtimes run (every runtime some model uses), and the ones unreachable."""
        return await self.runtimes.list(runtime_names(desired))

    async def managed_backends(
        self, desired: Desired | None = None
    ) -> tuple[list[Instance], dict[str, str]]:
        """Every backend modelplane manages, in every runtime the manifests use (``desired``,
        else read offline without writing anything; only the process runtime when they
        cannot be read), and the runtimes unreachable. For ``down`` and ``reset-db``."""
        if desired is None:
            try:
                _, desired = await self.load(online=False, persist=False)
            except FileNotFoundError:
                desired = None
        names = runtime_names(desired) if desired is not None else {"process"}
        instances, unavailable = await self.runtimes.list(names)
        return [i for i in instances if i.managed], unavailable

    async def record_generation(
        self, manifests: ManifestSet, desired: Desired, outcome: str
    ) -> tuple[int, bool]:
        """The generation these manifests are, and whether it is new.

        A new generation starts when the documents in force change, or when the git commit
        they come from does (committing an edit that was applied dirty is a new generation).
        A document turning invalid changes no document in force (its last valid version stays),
        so a change in the errors counts too: that is what records the ``Invalid`` event.
        """
        last = await self.store.last_generation()
        git = self.git = await self.source.git_info()
        sha = git.sha if git else None
        errors = [str(e) for e in manifests.errors]
        if (
            last is not None
            and last.digest == manifests.digest
            and last.git_commit == sha
            and last.summary.get("errors", []) == errors
        ):
            return last.id, False
        models = {name: m.spec_hash for name, m in desired.models.items()}
        summary: dict[str, Any] = {"models": models, "errors": errors}
        if git is not None:
            summary["git"] = {"subject": git.subject, "dirtyFiles": list(git.dirty_files)}
            if self.source.revision is not None:
                summary["git"]["pulled"] = True
        generation = await self.store.add_generation(
            manifests.digest,
            outcome,
            summary,
            git_commit=sha,
            git_branch=git.branch if git else None,
            git_dirty=git.dirty if git else None,
        )
        before = last.summary.get("models", {}) if last else {}
        changes = changes_between(before, models)
        source = f" from {git.describe()}" if git else ""
        await self.store.add_event(
            "Applied", f"generation {generation}{source}: {changes.summary() or 'no model changes'}"
        )
        if errors:
            await self.store.add_event(
                "Invalid",
                f"{len(errors)} invalid document(s); last valid versions kept:\n"
                + "\n".join(errors),
            )
        return generation, True


def runtime_names(desired: Desired) -> set[str]:
    """The runtimes to look at: every one a model uses, the Node's, and the Ray cluster when
    one is configured (actors there that no manifest wants any more are pruned too)."""
    names = {"process", desired.node.runtime, *(m.runtime for m in desired.models.values())}
    if desired.node.ray is not None:
        names.add("ray")
    return names
