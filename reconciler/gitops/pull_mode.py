"""Pull mode (``Node.git``): the clone's checkout becomes a second manifests root (of a
:class:`~.source.ManifestSource`), and the revision checked out is what generations record.

The directory given to ``modelplane run``/``apply`` stays the bootstrap: it holds the Node manifest
(which names the repository, the state directory and everything else about the box), and may hold
more documents. The documents reconciled are that directory's plus the checkout's; a name defined
in both is a duplicate, reported like any other. ``git``/``stateDir`` changes in the Node take
effect when the service restarts (they say where the clone is).

A failed fetch keeps the last good revision in force (across restarts too: it stays checked out
under ``stateDir``) and is reported: a ``GitSyncFailed`` event when the error first appears or
changes, ``status`` until a fetch works again (a ``GitSyncRecovered`` event then). A force-push is
followed: the remote is the truth.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.manifests import manifest_set
from reconciler.manifests.schema import GitSpec
from reconciler.state.store import Store

from .source import ManifestSource
from .sync import GitPoller, GitRepoSync, GitSyncError, Revision, redact_url

log = logging.getLogger("modelplane.pull")


class PullMode:
    """One remote branch followed into a manifest source."""

    def __init__(
        self, source: ManifestSource, store: Store, state_dir: Path, spec: GitSpec
    ) -> None:
        self.source = source
        self.store = store
        self.spec = spec
        self.repo = GitRepoSync(
            spec.url,
            spec.branch,
            state_dir=state_dir,
            ssh_key_file=spec.ssh_key_file,
            path=spec.path,
        )
        self.poller = GitPoller(
            self.repo, spec.interval, self._on_revision, self._on_error, self._on_recovered
        )
        self.on_revision: list[Callable[[], None]] = []  # e.g. the loop's reload trigger
        self.error: str | None = None

    def attach(self, revision: Revision) -> None:
        self.source.attach(revision)

    # --- one sync -------------------------------------------------------------------------------

    async def fetch(self) -> Revision | None:
        """Sync now; the revision in force afterwards (the last good one if the fetch failed)."""
        try:
            return await self.poller.fetch_now()
        except GitSyncError:
            return self.source.revision

    def use_checked_out(self) -> Revision | None:
        """Use the revision already on disk, without fetching (``plan``, ``status``)."""
        revision = self.repo.current()
        if revision is not None:
            self.attach(revision)
        return revision

    async def _on_revision(self, revision: Revision) -> None:
        self.attach(revision)
        for callback in self.on_revision:
            callback()

    async def _on_recovered(self, revision: Revision) -> None:
        self.error = None
        await self.store.add_event(
            "GitSyncRecovered", f"fetching {self._where} works again: {self._describe()}"
        )

    async def _on_error(self, exc: GitSyncError) -> None:
        if self.source.revision is None and exc.last_good is not None:
            self.attach(exc.last_good)  # a restart while the remote is unreachable
        if str(exc) != self.error:
            self.error = str(exc)
            await self.store.add_event("GitSyncFailed", f"{exc}; {self._describe()} stays in force")

    # --- the periodic fetch ---------------------------------------------------------------------

    def start(self, now: bool = False) -> None:
        """Fetch every ``interval``, the first time at once (``now``) or after one interval."""
        self.poller.start(now)

    async def stop(self) -> None:
        await self.poller.stop()

    # --- reporting ------------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{redact_url(self.spec.url)} ({self.spec.branch})"

    def _describe(self) -> str:
        revision = self.source.revision
        if revision is None:
            return "no revision"
        return f"revision {revision.short_sha} ({revision.subject})"

    def status(self) -> dict[str, Any]:
        revision = self.source.revision
        return {
            "url": redact_url(self.spec.url),
            "branch": self.spec.branch,
            "path": self.spec.path,
            "interval": self.spec.interval,
            "revision": revision.sha if revision else None,
            "subject": revision.subject if revision else None,
            "lastSync": self.poller.last_sync,
            "error": self.error,
        }

    def warning(self) -> str | None:
        """What ``status`` warns about: a failing fetch, or nothing fetched yet."""
        if self.error is None and self.source.revision is not None:
            return None
        if self.source.revision is None:
            return f"pull mode: no revision of {self._where} yet: {self.error or 'not fetched'}"
        return f"pull mode: fetching {self._where} fails ({self.error}); {self._describe()} stays"


async def attach_for_cli(
    source: ManifestSource, store: Store, state_dir: Path, fetch: bool
) -> tuple[PullMode | None, str | None]:
    """Pull mode for one CLI command: ``apply`` fetches once, ``plan``/``status`` read what is
    checked out. Returns the pull mode (None without ``Node.git``) and a warning to print."""
    try:
        spec = manifest_set.load(source.directory, await store.documents()).node.git
    except FileNotFoundError:
        return None, None
    if spec is None:
        return None, None
    mode = PullMode(source, store, state_dir, spec)
    if fetch:
        started = time.monotonic()
        await mode.fetch()
        log.debug("git sync took %.2fs", time.monotonic() - started)
    else:
        mode.use_checked_out()
    return mode, mode.warning()
