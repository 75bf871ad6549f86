"""Paths in the standard Hugging Face cache (``HF_HUB_CACHE``) layout, shared by every module here.

::

    <cache>/models--org--name/
        blobs/<etag>                     file contents; etag = sha256 (LFS) or git blob id
        snapshots/<commit>/<path>        symlink to ../../blobs/<etag>
        refs/<branch or tag>             the commit it pointed to when last fetched
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from huggingface_hub.file_download import repo_folder_name

COMMIT = re.compile(r"[0-9a-f]{40}")
SHA256 = re.compile(r"[0-9a-f]{64}")


def is_commit(revision: str) -> bool:
    """A full commit sha (what makes a manifest reproducible), as opposed to a branch or tag."""
    return COMMIT.fullmatch(revision) is not None


def repo_dir(cache_dir: Path, repo: str) -> Path:
    return Path(cache_dir) / repo_folder_name(repo_id=repo, repo_type="model")


def snapshot_dir(cache_dir: Path, repo: str, commit: str) -> Path:
    return repo_dir(cache_dir, repo) / "snapshots" / commit


def pointer_path(cache_dir: Path, repo: str, commit: str, path: str) -> Path:
    """Where ``path`` of ``commit`` appears in the cache (a symlink into ``blobs/``)."""
    return snapshot_dir(cache_dir, repo, commit).joinpath(*path.split("/"))


def blob_path(cache_dir: Path, repo: str, etag: str) -> Path:
    return repo_dir(cache_dir, repo) / "blobs" / etag


def read_ref(cache_dir: Path, repo: str, ref: str) -> str | None:
    """The commit a branch or tag pointed to when it was last fetched into this cache."""
    try:
        text = (repo_dir(cache_dir, repo) / "refs" / ref).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return text if is_commit(text) else None


def write_ref(cache_dir: Path, repo: str, ref: str, commit: str) -> None:
    """Record ``ref -> commit`` atomically, as huggingface_hub does, so offline mode can resolve it.

    Written only once the snapshot exists: a ref to a missing snapshot makes ``scan_cache_dir``
    report the whole repo as corrupted.
    """
    path = repo_dir(cache_dir, repo) / "refs" / ref
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file() and path.read_text(encoding="utf-8").strip() == commit:
        return
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(commit, encoding="utf-8")
    os.replace(tmp, path)


def link_target(pointer: Path) -> Path | None:
    """The blob a snapshot entry points to, or ``None`` if the entry is missing or dangling."""
    try:
        target = pointer.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return target if target.is_file() else None
