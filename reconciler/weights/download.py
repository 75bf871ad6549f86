"""Make a resolved revision's files present and verified in the cache: the `download` action.

The order is what keeps a failure harmless:

1. inspect: hash what is cached (ok / missing / corrupt); find files whose blob this repo already
   holds (another revision) or another repo holds (a hard-link donor, see :mod:`.dedupe`);
2. check free space against what must come over the network — a full disk stops here, with
   nothing in the cache touched;
3. delete corrupt files, link donors, and fetch the rest with ``snapshot_download`` (exact paths
   as ``allow_patterns``, pinned to the commit);
4. hash what was fetched; a file that fails is deleted and fetched once more, then it is fatal;
5. record ``refs/<branch>`` (so offline mode can resolve it) and share new blobs with other repos.

Interrupted transfers resume: when the connection drops mid-file, huggingface_hub asks for the
rest with a ``Range`` header, from the last 10 MiB chunk it wrote. (The installed
huggingface_hub, 2.x, downloads into a per-process temporary file that it deletes when a download
fails, so a download cut by a process restart starts that file over.)
"""

from __future__ import annotations

import glob
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download

from . import dedupe, layout
from .config import HubSettings
from .disk import DEFAULT_MARGIN, FreeSpace, check_space, free_space
from .errors import DownloadCancelled, HubUnreachable, NotCachedError, VerificationError
from .resolve import LIBRARY_NAME, RemoteFile, Resolution, hub_errors, resolve
from .verify import FileProblem, SnapshotCheck, check_file, check_snapshot

log = logging.getLogger(__name__)

#: Files of one model fetched at once (huggingface_hub's default is 8; the box runs several
#: downloads side by side, limited by ``Node.maxDownloads``).
FILE_WORKERS = 4


@dataclass(frozen=True)
class Progress:
    """Bytes of the model's files on disk so far (complete blobs plus partial downloads)."""

    done: int
    total: int
    files_done: int
    files_total: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class DownloadResult:
    """What a download pass did; :meth:`events` phrases the notable parts for the event log."""

    resolution: Resolution
    snapshot_dir: Path
    model_path: Path  # the main file for GGUF selections, else the snapshot directory
    downloaded: tuple[str, ...] = ()  # fetched from the hub in this pass
    linked: tuple[str, ...] = ()  # taken from an identical blob of another repo (hard link)
    refetched: tuple[FileProblem, ...] = ()  # were corrupt or truncated: deleted, fetched again
    bytes_downloaded: int = 0
    bytes_linked: int = 0
    notes: tuple[str, ...] = field(default=())

    def events(self) -> list[str]:
        """Human sentences, one per notable thing, for events and ``apply`` output."""
        out = [f"re-fetched {p.path}: {p.reason}" for p in self.refetched]
        if self.linked:
            out.append(
                f"reused {len(self.linked)} identical file(s) from other repos"
                f" as hard links ({self.bytes_linked} bytes not downloaded)"
            )
        if self.downloaded:
            out.append(
                f"downloaded {len(self.downloaded)} file(s), {self.bytes_downloaded} bytes,"
                f" {self.resolution.repo}@{self.resolution.commit[:12]}"
            )
        return out + list(self.notes)


def fetch(
    cache_dir: Path,
    repo: str,
    revision: str = "main",
    globs: list[str] | None = None,
    settings: HubSettings | None = None,
    **kwargs: Any,
) -> DownloadResult:
    """Resolve and download in one call (the CLI's path; the reconciler resolves separately)."""
    settings = settings or HubSettings()
    resolution = resolve(cache_dir, repo, revision, globs, settings)
    return ensure_downloaded(cache_dir, resolution, settings, **kwargs)


def ensure_downloaded(
    cache_dir: Path,
    resolution: Resolution,
    settings: HubSettings | None = None,
    *,
    progress: ProgressCallback | None = None,
    rehash: bool = True,
    margin: int = DEFAULT_MARGIN,
    measure: FreeSpace = free_space,
    file_workers: int = FILE_WORKERS,
    poll_interval: float = 0.5,
    cancel: threading.Event | None = None,
) -> DownloadResult:
    """Make every file of ``resolution`` present and verified under ``cache_dir`` (blocking).

    Files fetched now are always hashed. ``rehash=False`` checks files already cached by size
    only, for a caller that recorded an earlier full verification of this commit.
    Raises :class:`NotCachedError` offline with files missing, :class:`InsufficientDisk`,
    :class:`HubError`/:class:`HubUnreachable`, :class:`VerificationError`, and
    :class:`DownloadCancelled` once ``cancel`` is set (at the next chunk of data).
    """
    settings = settings or HubSettings()
    cache_dir = Path(cache_dir)
    check = check_snapshot(cache_dir, resolution, deep=rehash)
    if settings.offline:
        if not check.complete:
            raise NotCachedError(_offline_reason(resolution, check.missing, check.corrupt))
        return _result(cache_dir, resolution)

    work = _plan_work(cache_dir, resolution, check)
    check_space(cache_dir, work.bytes_to_fetch, margin=margin, measure=measure)
    _prepare(cache_dir, resolution, work)  # from here on the cache changes
    with _Poller(cache_dir, resolution, progress, poll_interval):
        refetched = _fetch_verified(cache_dir, resolution, settings, work, file_workers, cancel)
    if resolution.revision != resolution.commit:
        layout.write_ref(cache_dir, resolution.repo, resolution.revision, resolution.commit)
    _share(cache_dir, resolution, work.to_fetch)
    return _result(
        cache_dir,
        resolution,
        downloaded=tuple(r.path for r in work.to_fetch),
        linked=tuple(sorted(work.donors)),
        refetched=tuple(p for _, p in check.corrupt) + refetched,
        bytes_downloaded=work.bytes_to_fetch,
        bytes_linked=sum(r.size for r in work.todo if r.path in work.donors),
    )


@dataclass(frozen=True)
class _Work:
    """What a download pass must do, decided before anything is written."""

    todo: tuple[RemoteFile, ...]  # every file without a good snapshot entry
    corrupt: tuple[RemoteFile, ...]  # bad snapshot entries: delete, then fetch
    stale_blobs: tuple[Path, ...]  # this repo's blobs that fail their check: delete
    donors: dict[str, Path]  # repo path -> verified identical blob in another repo
    to_fetch: tuple[RemoteFile, ...]  # what must come over the network

    @property
    def bytes_to_fetch(self) -> int:
        return sum(r.size for r in self.to_fetch)


def _plan_work(cache_dir: Path, resolution: Resolution, check: SnapshotCheck) -> _Work:
    """Read-only: which files need bytes, and which can come from blobs already on disk."""
    corrupt = tuple(remote for remote, _ in check.corrupt)
    todo = (*check.missing, *corrupt)
    in_repo: set[str] = set()  # blob already here (another revision has the same file)
    stale: list[Path] = []
    for remote in check.missing:
        own = layout.blob_path(cache_dir, resolution.repo, remote.etag) if remote.etag else None
        if own is not None and own.is_file():
            if check_file(own, remote, deep=True) is None:
                in_repo.add(remote.path)
            else:
                stale.append(own)
    donors: dict[str, Path] = {}
    for remote in todo:
        if remote.sha256 and remote.path not in in_repo:
            own = layout.blob_path(cache_dir, resolution.repo, remote.sha256)
            donor = dedupe.find_donor(cache_dir, remote.sha256, remote.size, exclude=own)
            if donor is not None:
                donors[remote.path] = donor
    to_fetch = tuple(r for r in todo if r.path not in donors and r.path not in in_repo)
    return _Work(todo, corrupt, tuple(stale), donors, to_fetch)


def _prepare(cache_dir: Path, resolution: Resolution, work: _Work) -> None:
    """Delete what is bad and link what other repos already hold."""
    for remote in work.corrupt:
        log.warning("%s of %s is corrupt; fetching it again", remote.path, resolution.repo)
        _remove(cache_dir, resolution, remote)
    for blob in work.stale_blobs:
        blob.unlink(missing_ok=True)
    for donor in work.donors.values():
        dedupe.link_blob(donor, layout.blob_path(cache_dir, resolution.repo, donor.name))


def _fetch_verified(
    cache_dir: Path,
    resolution: Resolution,
    settings: HubSettings,
    work: _Work,
    workers: int,
    cancel: threading.Event | None = None,
) -> tuple[FileProblem, ...]:
    """Fetch ``work.todo`` and hash it; a file that fails is fetched once more, then it is fatal.

    Returns the problems found in freshly fetched files (each was fetched again successfully).
    """
    _snapshot_download(cache_dir, resolution, settings, list(work.todo), workers, cancel)
    fetched = {r.path for r in work.to_fetch}  # the rest was hashed before it was linked
    failed = [
        (remote, FileProblem(remote.path, problem))
        for remote in work.todo
        if (problem := _check(cache_dir, resolution, remote, deep=remote.path in fetched))
    ]
    if not failed:
        return ()
    for remote, problem in failed:
        log.warning("%s: %s after download; fetching it again", remote.path, problem.reason)
        _remove(cache_dir, resolution, remote)
    _snapshot_download(cache_dir, resolution, settings, [r for r, _ in failed], workers, cancel)
    still = [
        (remote, FileProblem(remote.path, problem))
        for remote, _ in failed
        if (problem := _check(cache_dir, resolution, remote, deep=True))
    ]
    for bad, _ in still:
        _remove(cache_dir, resolution, bad)  # never leave bad bytes where an engine loads them
    if still:
        remote, problem = still[0]
        raise VerificationError(
            f"{remote.path} of {resolution.repo}@{resolution.commit[:12]} fails"
            f" verification twice ({problem.reason}); {settings.endpoint} serves bad data"
        )
    return tuple(problem for _, problem in failed)


def _share(cache_dir: Path, resolution: Resolution, fetched: tuple[RemoteFile, ...]) -> None:
    """Hard-link newly fetched (and verified) blobs over copies in other repos."""
    for remote in fetched:
        if remote.sha256:
            blob = layout.blob_path(cache_dir, resolution.repo, remote.sha256)
            try:
                dedupe.share_blob(cache_dir, blob)
            except OSError as err:
                log.warning("could not share %s with other repos: %s", blob.name[:12], err)


def model_path(cache_dir: Path, resolution: Resolution) -> Path:
    """What an engine's ``{model_path}`` is: the selected GGUF (its first shard), else the snapshot.

    A whole-repo source (no globs) is its directory; multimodal projector files (``mmproj*``) are
    never the main file. ``{model_dir}`` is always the snapshot directory.
    """
    snapshot = layout.snapshot_dir(cache_dir, resolution.repo, resolution.commit)
    ggufs = sorted(
        f.path
        for f in resolution.files
        if f.path.endswith(".gguf") and not f.path.rsplit("/", 1)[-1].startswith("mmproj")
    )
    if resolution.globs and ggufs:
        return snapshot.joinpath(*ggufs[0].split("/"))
    return snapshot


def _result(cache_dir: Path, resolution: Resolution, **kwargs: Any) -> DownloadResult:
    return DownloadResult(
        resolution=resolution,
        snapshot_dir=layout.snapshot_dir(cache_dir, resolution.repo, resolution.commit),
        model_path=model_path(cache_dir, resolution),
        **kwargs,
    )


def _offline_reason(
    resolution: Resolution,
    missing: tuple[RemoteFile, ...],
    corrupt: tuple[tuple[RemoteFile, FileProblem], ...],
) -> str:
    names = [r.path for r in missing] + [f"{p.path} ({p.reason})" for _, p in corrupt]
    sample = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (
        f"offline (HF_HUB_OFFLINE) and {len(names)} file(s) of"
        f" {resolution.repo}@{resolution.revision} are not in the cache: {sample}"
    )


def _snapshot_download(
    cache_dir: Path,
    resolution: Resolution,
    settings: HubSettings,
    files: list[RemoteFile],
    workers: int,
    cancel: threading.Event | None = None,
) -> None:
    if not files:
        return
    what = f"{resolution.repo}@{resolution.revision}"
    with hub_errors(settings, what):
        snapshot_download(
            resolution.repo,
            revision=resolution.commit,
            cache_dir=cache_dir,
            endpoint=settings.endpoint,
            token=settings.token_arg,
            allow_patterns=[glob.escape(f.path) for f in files],
            max_workers=workers,
            tqdm_class=type("_QuietBar", (_QuietBar,), {"cancel": cancel}),
            library_name=LIBRARY_NAME,
        )
    # snapshot_download returns a partial snapshot when the hub stops answering mid-way
    absent = [
        f.path
        for f in files
        if layout.link_target(
            layout.pointer_path(cache_dir, resolution.repo, resolution.commit, f.path)
        )
        is None
    ]
    if absent:
        sample = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
        raise HubUnreachable(f"{settings.endpoint} did not deliver {sample} of {what}")


def _check(
    cache_dir: Path, resolution: Resolution, remote: RemoteFile, *, deep: bool
) -> str | None:
    pointer = layout.pointer_path(cache_dir, resolution.repo, resolution.commit, remote.path)
    return check_file(pointer, remote, deep=deep)


def _remove(cache_dir: Path, resolution: Resolution, remote: RemoteFile) -> None:
    """Delete a bad file's snapshot entry, and its blob when that is where the bad bytes are.

    Only this repo's link to the blob goes: another repo's hard link to the same content keeps
    its own copy (and its own verification). A pointer to some other blob is only unlinked.
    """
    pointer = layout.pointer_path(cache_dir, resolution.repo, resolution.commit, remote.path)
    target = layout.link_target(pointer)
    pointer.unlink(missing_ok=True)
    if remote.etag and target is not None and target.name == remote.etag:
        layout.blob_path(cache_dir, resolution.repo, remote.etag).unlink(missing_ok=True)


class _Poller:
    """Reports :class:`Progress` from what is on disk, every ``interval`` seconds, from a thread.

    Polling the cache (complete blobs + ``*.incomplete`` partial files) does not depend on how
    huggingface_hub drives its progress bars, and also sees a blob another process is fetching.
    """

    def __init__(
        self,
        cache_dir: Path,
        resolution: Resolution,
        callback: ProgressCallback | None,
        interval: float,
    ) -> None:
        self.cache_dir = cache_dir
        self.resolution = resolution
        self.callback = callback
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: Progress | None = None

    def __enter__(self) -> _Poller:
        if self.callback is not None:
            self._emit()
            self._thread = threading.Thread(target=self._run, name="weights-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._emit()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._emit()

    def _emit(self) -> None:
        current = measure_progress(self.cache_dir, self.resolution)
        if current == self._last or self.callback is None:
            return
        self._last = current
        try:
            self.callback(current)
        except Exception:
            log.exception("progress callback failed")


def measure_progress(cache_dir: Path, resolution: Resolution) -> Progress:
    """Bytes of ``resolution`` on disk now: complete files plus partial downloads."""
    done = files_done = 0
    for remote in resolution.files:
        pointer = layout.pointer_path(cache_dir, resolution.repo, resolution.commit, remote.path)
        blob = layout.blob_path(cache_dir, resolution.repo, remote.etag) if remote.etag else None
        if layout.link_target(pointer) is not None or (blob is not None and blob.is_file()):
            done += remote.size
            files_done += 1
        elif blob is not None:
            partial = 0
            for part in blob.parent.glob(glob.escape(blob.name) + ".*incomplete"):
                try:
                    partial = max(partial, part.stat().st_size)
                except OSError:
                    continue
            done += min(partial, remote.size)
    return Progress(
        done=done,
        total=resolution.total_size,
        files_done=files_done,
        files_total=len(resolution.files),
    )


class _QuietBar:
    """A progress bar that shows nothing: modelplane reports progress itself (see ``_Poller``).

    Implements the part of tqdm's interface ``snapshot_download`` uses; any other method is a no-op.
    It is also the one hook into huggingface_hub's transfer loop (``update`` runs for every chunk
    received), so it is where a download stops when ``cancel`` is set.
    """

    cancel: threading.Event | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.n = kwargs.get("initial", 0) or 0
        self.total = kwargs.get("total")
        self.format_dict: dict[str, Any] = {}

    def __enter__(self) -> _QuietBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: float | None = 1) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise DownloadCancelled("download cancelled: modelplane is stopping")
        self.n += n or 0

    def __getattr__(self, name: str) -> Callable[..., None]:
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None
