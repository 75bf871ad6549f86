"""Check cached files against what the hub reported: size always, content hash when asked.

LFS files are checked by sha256 (the hub's ``lfs.sha256``); small git-stored files by their git
blob id. A snapshot entry must also point at the blob the hub named (its ETag), so a stale file
left from another revision or source cannot pass for the right one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from huggingface_hub.utils.sha import git_hash, sha_fileobj

from . import layout
from .resolve import RemoteFile, Resolution

#: Hashing reads in chunks of this size: large enough to run at disk speed, small enough to stay
#: out of the way of a running model's memory.
HASH_CHUNK = 8 * 2**20


@dataclass(frozen=True)
class FileProblem:
    """A cached file that cannot be used as it is; ``reason`` is for people (events, status)."""

    path: str
    reason: str


@dataclass(frozen=True)
class SnapshotCheck:
    """How much of a resolution the cache holds, and in what state."""

    ok: tuple[RemoteFile, ...]
    missing: tuple[RemoteFile, ...]
    corrupt: tuple[tuple[RemoteFile, FileProblem], ...]

    @property
    def complete(self) -> bool:
        return not self.missing and not self.corrupt

    @property
    def bytes_present(self) -> int:
        return sum(f.size for f in self.ok)

    @property
    def bytes_missing(self) -> int:
        return sum(f.size for f in self.missing) + sum(f.size for f, _ in self.corrupt)


def check_snapshot(cache_dir: Path, resolution: Resolution, *, deep: bool = True) -> SnapshotCheck:
    """Sort the resolution's files into ok / missing / corrupt.

    ``deep=False`` checks presence, blob name and size only: a cheap test for the planner.
    ``deep=True`` also hashes every file, which reads it whole (seconds per GiB).
    """
    ok: list[RemoteFile] = []
    missing: list[RemoteFile] = []
    corrupt: list[tuple[RemoteFile, FileProblem]] = []
    for remote in resolution.files:
        pointer = layout.pointer_path(cache_dir, resolution.repo, resolution.commit, remote.path)
        if not pointer.is_symlink() and not pointer.exists():
            missing.append(remote)
            continue
        problem = check_file(pointer, remote, deep=deep)
        if problem is None:
            ok.append(remote)
        else:
            corrupt.append((remote, FileProblem(remote.path, problem)))
    return SnapshotCheck(ok=tuple(ok), missing=tuple(missing), corrupt=tuple(corrupt))


def check_file(pointer: Path, remote: RemoteFile, *, deep: bool = True) -> str | None:
    """Why the file at ``pointer`` is not ``remote`` (``None``: it is)."""
    blob = layout.link_target(pointer)
    if blob is None:
        return "dangling link (blob missing)"
    if remote.etag and pointer.is_symlink() and blob.name != remote.etag:
        return f"links to blob {blob.name[:12]}…, expected {remote.etag[:12]}…"
    size = blob.stat().st_size
    if size != remote.size:
        return f"size {size} bytes, expected {remote.size} (truncated or corrupt)"
    if not deep:
        return None
    if remote.sha256:
        actual = file_sha256(blob)
        if actual != remote.sha256:
            return f"sha256 {actual[:12]}…, expected {remote.sha256[:12]}…"
    elif remote.blob_id:
        actual = git_hash(blob.read_bytes())
        if actual != remote.blob_id:
            return f"git blob id {actual[:12]}…, expected {remote.blob_id[:12]}…"
    return None


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return sha_fileobj(f, chunk_size=HASH_CHUNK).hex()
