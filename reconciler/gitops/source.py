"""Where the manifests in force come from: the directory given to ``run``/``apply``, plus, in pull
mode, the checkout of the followed branch (whose revision is what generations record)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .sync import Revision
from .worktree import GitInfo, git_info_async


@dataclass
class ManifestSource:
    directory: Path  # absolute: fallback documents are remembered by path
    revision: Revision | None = None  # pull mode: the revision checked out

    @property
    def extra_roots(self) -> list[Path]:
        """Roots read beside the directory (pull mode's checkout)."""
        return [self.revision.manifests_dir] if self.revision is not None else []

    def attach(self, revision: Revision) -> None:
        """Reconcile from ``revision`` (its directory stays the same path across revisions)."""
        self.revision = revision

    async def git_info(self) -> GitInfo | None:
        """Pull mode's revision, else what the directory's work tree says (None: not in git)."""
        if self.revision is not None:
            rev = self.revision
            return GitInfo(rev.checkout, rev.sha, rev.branch, rev.subject, dirty=False)
        return await git_info_async(self.directory)
