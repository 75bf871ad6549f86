"""Resolve a manifest's ``source.huggingface`` to a commit and the exact files, sizes and hashes.

Online, one ``model_info(..., files_metadata=True)`` call gives the commit a branch or tag points to
and every file's size, git blob id and LFS sha256, in one consistent view. Offline (or with the hub
unreachable), the cache answers: ``refs/`` for the commit, the tree listing huggingface_hub stores
next to a snapshot for the file list, and blob names for the hashes.
The glob filter is huggingface_hub's own (:func:`filter_repo_objects`), the one
``snapshot_download(allow_patterns=...)`` applies, so both always select the same files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx2
from huggingface_hub import HfApi, get_cached_repo_tree
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import filter_repo_objects

from . import layout
from .config import HubSettings
from .errors import HubError, HubUnreachable, NoMatchingFiles, NotCachedError, redact

LIBRARY_NAME = "modelplane"
#: Seconds an API call may wait for the hub (huggingface_hub's default is no limit): a hub that
#: stops answering must not hold a reconcile pass; the cache and the state database answer then.
API_TIMEOUT = 30.0


@dataclass(frozen=True)
class RemoteFile:
    """One file of a revision as the hub describes it."""

    path: str
    size: int
    blob_id: str | None = None  # git object id; non-LFS files are stored under this name
    sha256: str | None = None  # LFS files: content hash, and the blob's name in the cache

    @property
    def etag(self) -> str | None:
        """The blob's file name in the cache (what the hub sends as the file's ETag)."""
        return self.sha256 or self.blob_id


@dataclass(frozen=True)
class Resolution:
    """A revision pinned to a commit, with the files the manifest's globs select."""

    repo: str
    revision: str  # as the manifest wrote it: branch, tag or sha
    commit: str
    files: tuple[RemoteFile, ...]
    globs: tuple[str, ...] | None = None
    source: Literal["hub", "cache"] = field(default="hub", compare=False)

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly form, for the state database."""
        return {
            "repo": self.repo,
            "revision": self.revision,
            "commit": self.commit,
            "globs": list(self.globs) if self.globs is not None else None,
            "source": self.source,
            "files": [
                {"path": f.path, "size": f.size, "blob_id": f.blob_id, "sha256": f.sha256}
                for f in self.files
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resolution:
        globs = data.get("globs")
        return cls(
            repo=data["repo"],
            revision=data["revision"],
            commit=data["commit"],
            globs=tuple(globs) if globs is not None else None,
            source=data.get("source", "hub"),
            files=tuple(RemoteFile(**f) for f in data["files"]),
        )


def resolve(
    cache_dir: Path,
    repo: str,
    revision: str = "main",
    globs: Sequence[str] | None = None,
    settings: HubSettings | None = None,
) -> Resolution:
    """Ask the hub; the cache answers when offline, or when the hub is down but has this cached."""
    settings = settings or HubSettings()
    if settings.offline:
        try:
            return resolve_cached(cache_dir, repo, revision, globs)
        except NotCachedError as err:
            raise NotCachedError(f"offline (HF_HUB_OFFLINE) and {err}") from None
    try:
        return resolve_remote(repo, revision, globs, settings)
    except (HubUnreachable, HubError) as err:
        if not err.retryable:  # the hub answered: not found, no access
            raise
        try:
            return resolve_cached(cache_dir, repo, revision, globs)
        except NotCachedError:
            raise err from None


def resolve_remote(
    repo: str,
    revision: str = "main",
    globs: Sequence[str] | None = None,
    settings: HubSettings | None = None,
) -> Resolution:
    """The commit ``revision`` points to on the hub now, and the selected files' metadata."""
    settings = settings or HubSettings()
    api = HfApi(endpoint=settings.endpoint, library_name=LIBRARY_NAME)
    with hub_errors(settings, f"{repo}@{revision}"):
        info = api.model_info(
            repo,
            revision=revision,
            files_metadata=True,
            token=settings.token_arg,
            timeout=API_TIMEOUT,
        )
    if not info.sha or not info.siblings:
        raise HubError(f"{settings.endpoint} returned no commit or file list for {repo}@{revision}")
    files = []
    for sibling in info.siblings:
        if sibling.size is None:
            raise HubError(f"{settings.endpoint} did not report the size of {sibling.rfilename}")
        files.append(
            RemoteFile(
                path=sibling.rfilename,
                size=sibling.lfs.size if sibling.lfs else sibling.size,
                blob_id=sibling.blob_id,
                sha256=sibling.lfs.sha256 if sibling.lfs else None,
            )
        )
    return _selected(repo, revision, info.sha, files, globs, "hub")


def resolve_cached(
    cache_dir: Path,
    repo: str,
    revision: str = "main",
    globs: Sequence[str] | None = None,
) -> Resolution:
    """What the cache knows about ``repo@revision``, without any network call.

    The file list is the tree listing huggingface_hub cached for the commit, so files that were
    selected but never downloaded still show up (and are reported missing); without a listing it
    is whatever the snapshot holds.
    """
    commit = revision if layout.is_commit(revision) else layout.read_ref(cache_dir, repo, revision)
    snapshot = layout.snapshot_dir(cache_dir, repo, commit) if commit else None
    if commit is None or snapshot is None or not snapshot.is_dir():
        raise NotCachedError(f"{repo}@{revision} is not in the cache at {cache_dir}")
    try:
        tree = get_cached_repo_tree(repo, revision=commit, cache_dir=cache_dir)
        listed = [(f.path, f.size, f.blob_id) for f in tree]
    except CachedRepoTreeNotFoundError:
        listed = [
            (p.relative_to(snapshot).as_posix(), None, None)
            for p in sorted(snapshot.rglob("*"))
            if not p.is_dir()
        ]
    files = []
    for path, size, blob_id in listed:
        target = layout.link_target(layout.pointer_path(cache_dir, repo, commit, path))
        name = target.name if target else None
        sha256 = name if name and layout.SHA256.fullmatch(name) else None
        if blob_id is None and name and layout.COMMIT.fullmatch(name):
            blob_id = name
        if size is None:
            size = target.stat().st_size if target else 0
        files.append(RemoteFile(path=path, size=size, blob_id=blob_id, sha256=sha256))
    return _selected(repo, revision, commit, files, globs, "cache")


def _selected(
    repo: str,
    revision: str,
    commit: str,
    files: list[RemoteFile],
    globs: Sequence[str] | None,
    source: Literal["hub", "cache"],
) -> Resolution:
    chosen = list(
        filter_repo_objects(
            files, allow_patterns=list(globs) if globs else None, key=lambda f: f.path
        )
    )
    if not chosen:
        sample = ", ".join(sorted(f.path for f in files)[:8]) or "no files"
        wanted = ", ".join(globs) if globs else "(whole repo)"
        raise NoMatchingFiles(
            f"no file of {repo}@{revision} matches {wanted}; the revision has: {sample}"
        )
    return Resolution(
        repo=repo,
        revision=revision,
        commit=commit,
        files=tuple(sorted(chosen, key=lambda f: f.path)),
        globs=tuple(globs) if globs else None,
        source=source,
    )


@contextlib.contextmanager
def hub_errors(settings: HubSettings, what: str) -> Iterator[None]:
    """Turn huggingface_hub and transport errors into :mod:`.errors` types, token redacted."""
    try:
        yield
    except RevisionNotFoundError:
        raise HubError(f"revision not found: {what} on {settings.endpoint}") from None
    except GatedRepoError:
        raise HubError(
            f"{what} is gated on {settings.endpoint}: accept its terms and set a token"
            " (Node hfTokenFile or HF_TOKEN)"
        ) from None
    except RepositoryNotFoundError:
        hint = "" if settings.token else " (if it is private or gated, set a token)"
        raise HubError(f"repository not found: {what} on {settings.endpoint}{hint}") from None
    except (OfflineModeIsEnabled, LocalEntryNotFoundError) as err:
        raise HubUnreachable(
            redact(f"cannot reach {settings.endpoint} for {what}: {err}", settings.token)
        ) from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else 0
        if status in (401, 403):
            raise HubError(
                f"{settings.endpoint} refused access to {what} ({status}): check the token"
                " (Node hfTokenFile or HF_TOKEN)"
            ) from None
        raise HubError(
            redact(f"{settings.endpoint} answered {status} for {what}", settings.token),
            retryable=status >= 500 or status == 429,
        ) from None
    except httpx2.TransportError as err:
        raise HubUnreachable(
            redact(
                f"cannot reach {settings.endpoint} for {what}: {type(err).__name__}: {err}",
                settings.token,
            )
        ) from None
    except OSError as err:
        # huggingface_hub's "Consistency check failed" (size mismatch after its own retries),
        # or the disk failing under a download
        raise HubError(
            redact(f"download of {what} failed: {err}", settings.token), retryable=True
        ) from None
