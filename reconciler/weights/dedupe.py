"""Identical weights in different repos stored once, as hard links between their ``blobs/`` entries.

An LFS blob's file name in the cache is its sha256, so the same name in two repos' ``blobs/``
directories means the same content (a fork, a re-upload, a quantisation shared by two repos). The
copy used as the source of a link is always hashed first: a corrupt blob is never spread.
Links are made atomically (link to a temporary name, then rename over), so a reader never sees a
missing file, and a running model that has the old file open keeps its (identical) data.
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from . import layout
from .verify import file_sha256


@dataclass(frozen=True)
class DedupeReport:
    linked: int  # blob entries replaced by a hard link
    bytes_saved: int


def lfs_blobs(cache_dir: Path) -> dict[str, list[Path]]:
    """Every regular LFS blob in the cache, grouped by sha256 (symlinked blobs are left out)."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for blobs in sorted(Path(cache_dir).glob("*--*/blobs")):
        for entry in sorted(blobs.iterdir()):
            if layout.SHA256.fullmatch(entry.name) and _is_regular(entry):
                groups[entry.name].append(entry)
    return groups


def find_donor(
    cache_dir: Path, sha256: str, size: int, *, exclude: Path | None = None
) -> Path | None:
    """A verified copy of this blob in another repo of the cache, to link instead of downloading."""
    for candidate in lfs_blobs_named(cache_dir, sha256):
        if exclude is not None and candidate == exclude:
            continue
        try:
            if candidate.stat().st_size == size and file_sha256(candidate) == sha256:
                return candidate
        except OSError:
            continue
    return None


def lfs_blobs_named(cache_dir: Path, sha256: str) -> list[Path]:
    return [p for p in sorted(Path(cache_dir).glob(f"*--*/blobs/{sha256}")) if _is_regular(p)]


def link_blob(source: Path, target: Path) -> None:
    """Make ``target`` a hard link to ``source``, replacing whatever ``target`` was, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.link")
    os.link(source, tmp)
    try:
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def share_blob(cache_dir: Path, verified: Path) -> DedupeReport:
    """Point every other copy of ``verified``'s content at it (the caller has just hashed it)."""
    linked = saved = 0
    source = verified.stat()
    for other in lfs_blobs_named(cache_dir, verified.name):
        if other == verified:
            continue
        with contextlib.suppress(OSError):
            st = other.stat()
            if (st.st_dev, st.st_ino) == (source.st_dev, source.st_ino):
                continue
            if st.st_dev != source.st_dev:
                continue  # hard links cannot cross filesystems
            link_blob(verified, other)
            linked += 1
            saved += st.st_size if st.st_nlink == 1 else 0
    return DedupeReport(linked=linked, bytes_saved=saved)


def dedupe_cache(cache_dir: Path) -> DedupeReport:
    """Link together every group of identical LFS blobs in the cache (a maintenance sweep).

    Each group's source is the first copy whose content matches its name; copies that do not
    match are replaced by the verified one too, which repairs them.
    """
    linked = saved = 0
    for sha256, copies in lfs_blobs(cache_dir).items():
        inodes = {(p.stat().st_dev, p.stat().st_ino) for p in copies}
        if len(inodes) < 2:
            continue
        source = next((p for p in copies if file_sha256(p) == sha256), None)
        if source is None:
            continue
        report = share_blob(cache_dir, source)
        linked += report.linked
        saved += report.bytes_saved
    return DedupeReport(linked=linked, bytes_saved=saved)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False
