"""The async face of the weights subsystem, for the executor and the proxy's wake path.

Blocking work (hub calls, hashing, downloads) runs in threads; at most
``max_downloads`` downloads run at once (``Node.maxDownloads``); a second request for a download
already under way joins it instead of starting another, so a wake request simply awaits the
prefetch. Progress callbacks run on the event loop.
Hub calls and downloads run in daemon threads rather than asyncio's default executor: a
huggingface_hub download cannot be cancelled, and the executor's shutdown would hold the exit of
``modelplane run`` until a multi-GB transfer ends; a cut download resumes on the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .config import HubSettings
from .disk import DEFAULT_MARGIN, FreeSpace, free_space
from .download import DownloadResult, Progress, ProgressCallback, ensure_downloaded
from .gc import GcPlan, InUse, collect
from .gguf_meta import GgufMeta, read_gguf_metadata
from .resolve import Resolution, resolve
from .verify import SnapshotCheck, check_snapshot

_Key = tuple[str, str, tuple[str, ...]]
T = TypeVar("T")
THREAD_PREFIX = "weights-hub-"
log = logging.getLogger(__name__)


class Weights:
    """One box's weights cache. Safe to share across tasks of one event loop."""

    def __init__(
        self,
        cache_dir: str | Path,
        settings: HubSettings | None = None,
        *,
        max_downloads: int = 2,
        margin: int = DEFAULT_MARGIN,
        measure: FreeSpace = free_space,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        self.settings = settings or HubSettings()  # replace it to apply a new token or endpoint
        self.margin = margin
        self.measure = measure
        self.max_downloads = max_downloads
        self._slots = asyncio.Semaphore(max_downloads)
        self._jobs: dict[_Key, _Job] = {}
        self._cancel = threading.Event()

    async def resolve(
        self, repo: str, revision: str = "main", files: Sequence[str] | None = None
    ) -> Resolution:
        """Commit and file list for a manifest's source (hub, or the cache when offline)."""
        return await in_daemon_thread(
            resolve, self.cache_dir, repo, revision, list(files) if files else None, self.settings
        )

    async def check(self, resolution: Resolution, *, deep: bool = False) -> SnapshotCheck:
        """What of ``resolution`` is cached; ``deep=False`` (sizes only) is cheap for every pass."""
        return await asyncio.to_thread(check_snapshot, self.cache_dir, resolution, deep=deep)

    def progress(self, resolution: Resolution) -> Progress | None:
        """The latest progress of a download under way, or ``None``."""
        job = self._jobs.get(_key(resolution))
        return job.last if job else None

    async def ensure(
        self,
        resolution: Resolution,
        progress: ProgressCallback | None = None,
        *,
        rehash: bool = True,
    ) -> DownloadResult:
        """Download and verify ``resolution`` (see :func:`.download.ensure_downloaded`).

        A call for a resolution already being downloaded joins that download.
        """
        key = _key(resolution)
        job = self._jobs.get(key)
        if job is None:
            job = _Job(asyncio.get_running_loop())
            self._jobs[key] = job
            job.task = asyncio.create_task(self._run(key, job, resolution, rehash))
        if progress is not None:
            job.listeners.append(progress)
            if job.last is not None:
                progress(job.last)
        try:
            return await asyncio.shield(job.task)
        finally:
            if progress in job.listeners:
                job.listeners.remove(progress)

    async def _run(
        self, key: _Key, job: _Job, resolution: Resolution, rehash: bool
    ) -> DownloadResult:
        try:
            async with self._slots:
                return await in_daemon_thread(
                    ensure_downloaded,
                    self.cache_dir,
                    resolution,
                    self.settings,
                    progress=job.report,
                    rehash=rehash,
                    margin=self.margin,
                    measure=self.measure,
                    cancel=self._cancel,
                )
        finally:
            self._jobs.pop(key, None)

    def close(self) -> None:
        """Stop every download under way (each at its next chunk of data); for shutdown."""
        self._cancel.set()

    async def gguf_metadata(self, path: str | Path) -> GgufMeta:
        return await asyncio.to_thread(read_gguf_metadata, path)

    async def gc(self, in_use: InUse, *, delete: bool = False) -> GcPlan:
        return await asyncio.to_thread(collect, self.cache_dir, list(in_use), delete=delete)


class _Job:
    """A download under way: its task, who listens to its progress, and the last figure."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task: asyncio.Task[DownloadResult]
        self.listeners: list[Callable[[Progress], None]] = []
        self.last: Progress | None = None

    def report(self, progress: Progress) -> None:
        """Called from the download thread: hand the figure to the loop (unless it closed)."""
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._deliver, progress)

    def _deliver(self, progress: Progress) -> None:
        self.last = progress
        for listener in list(self.listeners):
            try:
                listener(progress)
            except Exception:
                log.exception("progress listener failed")


async def in_daemon_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a daemon thread; the process may exit while it still runs."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(result: Any, error: BaseException | None) -> None:
        if future.done():  # the awaiting task was cancelled
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def run() -> None:
        try:
            result, error = fn(*args, **kwargs), None
        except BaseException as exc:
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the event loop is closed: nobody waits now
            loop.call_soon_threadsafe(deliver, result, error)

    threading.Thread(target=run, name=f"{THREAD_PREFIX}{fn.__name__}", daemon=True).start()
    return await future


def lingering_threads(grace: float) -> list[threading.Thread]:
    """Hub threads still running after ``grace`` seconds (a socket read stalled on a hub that
    stopped answering ends only at huggingface_hub's read timeout, retried)."""
    deadline = time.monotonic() + grace
    threads = [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t in threads if t.is_alive()]


def _key(resolution: Resolution) -> _Key:
    return (resolution.repo, resolution.commit, tuple(f.path for f in resolution.files))
