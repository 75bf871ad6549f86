"""What the state database remembers about weights (tables of migration 2 in :mod:`.store`).

- ``weights_revisions``: the commit each ``(repo, revision, globs)`` last resolved to, with the
  whole resolution (files, sizes, hashes), so a restart, an offline box or a hub outage still
  knows which bytes a manifest means, and ``status``/``gc`` work without the network;
- ``weights_files``: per file of a commit, its size and sha256, the fingerprint (size, mtime,
  inode) of the blob when it was last hashed — a file whose fingerprint still matches need not be
  hashed again before a start — and the GGUF header metadata.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reconciler.state.store import Store

if TYPE_CHECKING:  # the weights package imports huggingface_hub: only when hub sources exist
    from . import Resolution


@dataclass(frozen=True)
class FileRecord:
    path: str
    size: int
    sha256: str | None
    fingerprint: str | None  # of the blob when it was verified; None: never verified
    verified_at: float | None
    gguf: Mapping[str, Any] | None


def globs_key(globs: Sequence[str] | None) -> str:
    """The globs as a key: ``[]`` stands for the whole repo."""
    return json.dumps(list(globs) if globs else [])


class WeightsRecords:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def cached_resolution(
        self, repo: str, revision: str, globs: Sequence[str] | None
    ) -> Resolution | None:
        async with self.store.db.execute(
            "SELECT resolution FROM weights_revisions"
            " WHERE repo = ? AND revision = ? AND globs = ?",
            (repo, revision, globs_key(globs)),
        ) as cur:
            row = await cur.fetchone()
        from . import Resolution

        return Resolution.from_dict(json.loads(row[0])) if row else None

    async def save_resolution(self, resolution: Resolution) -> None:
        await self.store.db.execute(
            "INSERT INTO weights_revisions (repo, revision, globs, commit_sha, resolution,"
            " resolved_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(repo, revision, globs) DO UPDATE"
            " SET commit_sha = excluded.commit_sha, resolution = excluded.resolution,"
            " resolved_at = excluded.resolved_at",
            (
                resolution.repo,
                resolution.revision,
                globs_key(resolution.globs),
                resolution.commit,
                json.dumps(resolution.to_dict()),
                time.time(),
            ),
        )

    async def commits(self) -> list[tuple[str, str]]:
        """Every ``(repo, commit)`` a manifest's revision resolved to (for ``gc``'s in-use set)."""
        async with self.store.db.execute(
            "SELECT DISTINCT repo, commit_sha FROM weights_revisions"
        ) as cur:
            return [(r[0], r[1]) for r in await cur.fetchall()]

    async def files(self, repo: str, commit: str) -> dict[str, FileRecord]:
        async with self.store.db.execute(
            "SELECT path, size, sha256, fingerprint, verified_at, gguf FROM weights_files"
            " WHERE repo = ? AND commit_sha = ?",
            (repo, commit),
        ) as cur:
            rows = await cur.fetchall()
        return {
            r[0]: FileRecord(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]) if r[5] else None)
            for r in rows
        }

    async def save_verified(
        self,
        resolution: Resolution,
        fingerprints: Mapping[str, str | None],
        gguf: Mapping[str, Mapping[str, Any]],
    ) -> None:
        """Every file of ``resolution`` was hashed (or size-checked after an earlier hash) now."""
        now = time.time()
        rows = [
            (
                resolution.repo,
                resolution.commit,
                f.path,
                f.size,
                f.sha256,
                fingerprints.get(f.path),
                now,
                json.dumps(gguf[f.path]) if f.path in gguf else None,
            )
            for f in resolution.files
        ]
        await self.store.db.executemany(
            "INSERT INTO weights_files (repo, commit_sha, path, size, sha256, fingerprint,"
            " verified_at, gguf) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(repo, commit_sha, path) DO UPDATE SET size = excluded.size,"
            " sha256 = excluded.sha256, fingerprint = excluded.fingerprint,"
            " verified_at = excluded.verified_at, gguf = COALESCE(excluded.gguf, gguf)",
            rows,
        )
