"""``modelplane gc``: find cached revisions nothing uses, and delete them only when asked.

The cache is read with huggingface_hub's ``scan_cache_dir`` and deleted with its
``delete_revisions(...).execute()``, one repo at a time: a fork shares its parent's commit shas,
and a deletion by sha alone would take the revision out of both repos.
A revision is *in use* when a ``(repo, revision)`` pair names it by commit sha or by a ref
(branch or tag) that points to it in the cache. The caller passes every declared model's source
and every running instance's commit; anything the scan cannot read is reported and left alone.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import (
    CachedRepoInfo,
    CachedRevisionInfo,
    DeleteCacheStrategy,
    HFCacheInfo,
    scan_cache_dir,
)

InUse = Iterable[tuple[str, str]]  # (repo id, commit sha or ref name)


@dataclass(frozen=True)
class GcCandidate:
    repo: str
    repo_type: str
    commit: str
    refs: tuple[str, ...]
    size: int  # bytes of the revision's files (a blob shared with a kept revision counts too)
    last_modified: float


@dataclass(frozen=True)
class GcPlan:
    candidates: tuple[GcCandidate, ...]
    kept: tuple[tuple[str, str], ...]  # (repo, commit) in use
    reclaimable: int  # bytes freed by deleting every candidate (hard links counted once)
    warnings: tuple[str, ...]  # repos the scan could not read: never touched


def plan_gc(cache_dir: Path, in_use: InUse) -> GcPlan:
    """What ``gc`` would delete: every cached revision no ``in_use`` pair names (read-only)."""
    if not Path(cache_dir).is_dir():
        return GcPlan(candidates=(), kept=(), reclaimable=0, warnings=())
    return _plan(scan_cache_dir(cache_dir), in_use)


def _plan(info: HFCacheInfo, in_use: InUse) -> GcPlan:
    used = _index(in_use)
    candidates, kept = [], []
    for repo in sorted(info.repos, key=lambda r: (r.repo_type, r.repo_id)):
        for rev in sorted(repo.revisions, key=lambda r: r.last_modified):
            if _is_used(repo, rev, used):
                kept.append((repo.repo_id, rev.commit_hash))
            else:
                candidates.append(
                    GcCandidate(
                        repo=repo.repo_id,
                        repo_type=repo.repo_type,
                        commit=rev.commit_hash,
                        refs=tuple(sorted(rev.refs)),
                        size=rev.size_on_disk,
                        last_modified=rev.last_modified,
                    )
                )
    return GcPlan(
        candidates=tuple(candidates),
        kept=tuple(kept),
        reclaimable=_reclaimable(info, candidates),
        warnings=tuple(str(w) for w in info.warnings),
    )


def collect(cache_dir: Path, in_use: InUse, *, delete: bool = False) -> GcPlan:
    """Plan, and with ``delete=True`` remove every candidate.

    The plan is recomputed here from a fresh scan, so a revision that came into use since an
    earlier listing is kept. Pass the commits of downloads under way too: their snapshot exists
    before their branch ref is written.
    """
    if not Path(cache_dir).is_dir():
        return plan_gc(cache_dir, in_use)
    info = scan_cache_dir(cache_dir)
    plan = _plan(info, in_use)
    if not delete:
        return plan
    for strategy in _strategies(info, plan.candidates):
        strategy.execute()
    return plan


def _strategies(
    info: HFCacheInfo, candidates: Iterable[GcCandidate]
) -> Iterator[DeleteCacheStrategy]:
    by_repo: dict[tuple[str, str], list[str]] = defaultdict(list)
    for c in candidates:
        by_repo[(c.repo_type, c.repo)].append(c.commit)
    for repo in info.repos:
        commits = by_repo.get((repo.repo_type, repo.repo_id))
        if commits:
            # scoped to this one repo, so a fork's identical commit sha is not deleted with it
            yield dataclasses.replace(info, repos=frozenset({repo})).delete_revisions(*commits)


def _index(in_use: InUse) -> dict[str, set[str]]:
    used: dict[str, set[str]] = defaultdict(set)
    for repo, revision in in_use:
        used[repo].add(revision)
    return used


def _is_used(repo: CachedRepoInfo, rev: CachedRevisionInfo, used: dict[str, set[str]]) -> bool:
    if repo.repo_type != "model":
        return False
    names = used.get(repo.repo_id, set())
    return rev.commit_hash in names or bool(names & set(rev.refs))


def _reclaimable(info: HFCacheInfo, candidates: list[GcCandidate]) -> int:
    """Bytes actually freed: a blob goes only when every link to it is deleted."""
    strategies = list(_strategies(info, candidates))
    doomed: set[Path] = set()
    for s in strategies:
        doomed |= set(s.blobs)
        for repo_path in s.repos:
            doomed |= {p for p in (Path(repo_path) / "blobs").glob("*") if p.is_file()}
    by_inode: dict[tuple[int, int], list[os.stat_result]] = defaultdict(list)
    for path in doomed:
        try:
            st = path.stat()
        except OSError:
            continue
        by_inode[(st.st_dev, st.st_ino)].append(st)
    return sum(sts[0].st_size for sts in by_inode.values() if len(sts) >= sts[0].st_nlink)
