"""A read-only view of a Hugging Face cache as the hub's repos, revisions and files.

This is what the mirror serves: a repo is ``models--org--name``, a revision is a snapshot (or a
ref pointing to one), a file is a snapshot entry, and its blob's name is its ETag — a sha256 for
LFS files, a git blob id otherwise — so nothing needs hashing at request time.
Only snapshot entries are ever served, resolved inside the cache: no path from a request reaches
the filesystem unchecked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from huggingface_hub.utils.sha import git_hash

from . import layout
from .verify import file_sha256

_REPO_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
_REF = re.compile(r"^[\w.-]+(/[\w.-]+)*$")


@dataclass(frozen=True)
class StoredFile:
    path: str  # inside the repo, with "/"
    blob: Path  # the file on disk to send
    size: int
    etag: str  # sha256 for LFS files, git blob id otherwise

    @property
    def is_lfs(self) -> bool:
        return layout.SHA256.fullmatch(self.etag) is not None

    @property
    def blob_id(self) -> str:
        """The git object id the hub reports: the LFS pointer's for LFS files."""
        return lfs_pointer_oid(self.etag, self.size) if self.is_lfs else self.etag

    @property
    def pointer_size(self) -> int:
        return len(lfs_pointer(self.etag, self.size))


class CacheStore:
    """Repos of one cache directory; every method re-reads the disk (the cache changes)."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.root = Path(cache_dir).resolve()
        self._hashed: dict[tuple[Path, int, int, int], str] = {}  # (path, ino, size, mtime)

    def repos(self) -> list[str]:
        out = []
        for entry in sorted(self.root.glob("models--*")):
            if (entry / "snapshots").is_dir():
                out.append(entry.name.removeprefix("models--").replace("--", "/"))
        return out

    def exists(self, repo: str) -> bool:
        folder = self._repo_folder(repo)
        return folder is not None and (folder / "snapshots").is_dir()

    def resolve(self, repo: str, revision: str) -> str | None:
        """The commit a revision names here: a snapshot's sha, or a ref that points to one."""
        folder = self._repo_folder(repo)
        if folder is None:
            return None
        if layout.is_commit(revision):
            commit: str | None = revision
        elif _REF.fullmatch(revision) and ".." not in revision:
            commit = layout.read_ref(self.root, repo, revision)
        else:
            commit = None
        if commit and (folder / "snapshots" / commit).is_dir():
            return commit
        return None

    def files(self, repo: str, commit: str) -> dict[str, StoredFile]:
        """Every servable file of a snapshot, by repo path."""
        folder = self._repo_folder(repo)
        if folder is None:
            return {}
        snapshot = folder / "snapshots" / commit
        out: dict[str, StoredFile] = {}
        for entry in sorted(snapshot.rglob("*")):
            blob = layout.link_target(entry)
            if blob is None or not blob.is_relative_to(self.root):
                continue
            size = blob.stat().st_size
            etag = blob.name if entry.is_symlink() else self._content_etag(blob)
            path = entry.relative_to(snapshot).as_posix()
            out[path] = StoredFile(path=path, blob=blob, size=size, etag=etag)
        return out

    def _content_etag(self, blob: Path) -> str:
        """A cache written without symlinks (copies) has no blob names: hash once, remember."""
        st = blob.stat()
        key = (blob, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._hashed:
            self._hashed[key] = file_sha256(blob)
        return self._hashed[key]

    def last_modified(self, repo: str, commit: str) -> str:
        folder = self._repo_folder(repo)
        stamp = (folder / "snapshots" / commit).stat().st_mtime if folder else 0.0
        return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")

    def _repo_folder(self, repo: str) -> Path | None:
        if not _REPO_ID.fullmatch(repo) or "--" in repo or ".." in repo:
            return None
        folder = layout.repo_dir(self.root, repo)
        return folder if folder.is_dir() else None


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The text git stores in place of an LFS file."""
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
    )


def lfs_pointer_oid(sha256: str, size: int) -> str:
    """The git blob id of an LFS pointer (what the hub reports as an LFS file's ``blobId``)."""
    return git_hash(lfs_pointer(sha256, size))
