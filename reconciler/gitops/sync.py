"""Pull mode: modelplane keeps its own clone of a manifests repository (Flux's GitRepository).

On disk, under ``<stateDir>/git/<repo-name>-<hash of url and branch>/``::

    repo.git/           a bare repository; only modelplane writes to it
    checkouts/<sha>/    one git worktree per materialised revision (the current one and the one
                        before it are kept)
    current -> checkouts/<sha>      a symlink, replaced atomically
    known_hosts         ssh host keys, pinned on first use (pre-populate it to pin them yourself)

Why worktrees and a symlink instead of checking out in place: a reconcile pass may read the
manifests at any moment (a periodic resync, a wake request). Checking out in place writes files
one by one, so a pass could see a tree with a model's file missing and stop that model. Here a new
revision is checked out completely beside the old one, and only then does ``current`` switch.

A sync is ``git fetch`` of ``+refs/heads/<branch>`` (the ``+`` follows force-pushes: the remote is
the truth) and, when the branch head moved, a checkout of exactly that commit. If the fetch or the
checkout fails, nothing under ``current`` changes and :class:`GitSyncError` says why; the last good
revision stays in force, also across restarts (it is read back from ``current``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import inspect
import logging
import os
import re
import shlex
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .worktree import git_env

log = logging.getLogger(__name__)

KEEP_CHECKOUTS = 2  # the current revision and the one before (a pass may still be reading it)


@dataclass(frozen=True)
class Revision:
    """A revision checked out from the remote, and where to reconcile from."""

    sha: str
    subject: str
    branch: str
    manifests_dir: Path  # <clone>/current/<path>: stable across revisions (through the symlink)
    checkout: Path  # <clone>/checkouts/<sha>: this revision's own tree

    @property
    def short_sha(self) -> str:
        return self.sha[:12]


class GitSyncError(Exception):
    """A fetch or checkout failed: message for the event log; ``last_good`` stays in force."""

    def __init__(self, message: str, last_good: Revision | None) -> None:
        super().__init__(message)
        self.last_good = last_good


def redact_url(url: str) -> str:
    """The URL without credentials (``https://user:token@host`` → ``https://***@host``)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def clone_dir_name(url: str, branch: str) -> str:
    """A readable, unique directory name for one (url, branch): ``manifests-1a2b3c4d``."""
    stem = re.sub(r"\.git$", "", url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1])
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", stem)[:40] or "repo"
    digest = hashlib.sha256(f"{url}\n{branch}".encode()).hexdigest()[:8]
    return f"{stem}-{digest}"


class GitRepoSync:
    """Fetches one branch of one remote into a private clone and checks its head out atomically."""

    def __init__(
        self,
        url: str,
        branch: str = "main",
        *,
        state_dir: str | os.PathLike[str],
        ssh_key_file: str | os.PathLike[str] | None = None,
        path: str = ".",
        timeout: float = 120.0,
    ) -> None:
        """``path``: the manifests directory inside the repository (default: its root)."""
        if Path(path).is_absolute() or ".." in Path(path).parts:
            raise ValueError(f"git path {path!r} must be relative and stay inside the repository")
        self.url = url
        self.branch = branch
        self.path = path
        self.timeout = timeout
        self.ssh_key_file = Path(ssh_key_file) if ssh_key_file else None
        self.base_dir = Path(state_dir) / "git" / clone_dir_name(url, branch)
        self._repo = self.base_dir / "repo.git"
        self._checkouts = self.base_dir / "checkouts"
        self._current = self.base_dir / "current"
        self._lock = asyncio.Lock()

    # --- what is in force ---------------------------------------------------------------------

    def current(self) -> Revision | None:
        """The last good revision on disk (also one a previous run checked out), or None."""
        target = self._current.resolve() if self._current.is_symlink() else None
        if target is None or not target.is_dir():
            return None
        sha = target.name
        subject = ""
        marker = target.parent / f"{sha}.subject"
        if marker.is_file():
            subject = marker.read_text().strip()
        return self._revision(sha, subject)

    def _revision(self, sha: str, subject: str) -> Revision:
        return Revision(
            sha=sha,
            subject=subject,
            branch=self.branch,
            manifests_dir=(self._current / self.path) if self.path != "." else self._current,
            checkout=self._checkouts / sha,
        )

    # --- syncing --------------------------------------------------------------------------------

    async def sync(self) -> Revision:
        """Fetch the branch and check its head out; the revision now in force.

        Raises :class:`GitSyncError` (with ``last_good``) when the remote cannot be fetched, has no
        such branch, or the checkout fails; the previous checkout is left untouched.
        """
        async with self._lock, self._file_lock():
            last_good = self.current()
            try:
                sha, subject = await self._fetch()
                if last_good is not None and last_good.sha == sha:
                    return last_good
                await self._checkout(sha, subject)
            except GitSyncError as exc:
                exc.last_good = last_good
                raise
            await self._prune_checkouts(keep={sha, last_good.sha if last_good else sha})
            return self._revision(sha, subject)

    @contextlib.asynccontextmanager
    async def _file_lock(self) -> AsyncIterator[None]:
        """One sync at a time across processes (``modelplane apply`` beside a running service)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.base_dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise GitSyncError(
                            f"another modelplane holds {self.base_dir / 'lock'}", last_good=None
                        ) from None
                    await asyncio.sleep(0.1)
            yield
        finally:
            os.close(fd)  # releases the lock

    async def _fetch(self) -> tuple[str, str]:
        if not (self._repo / "HEAD").is_file():
            self.base_dir.mkdir(parents=True, exist_ok=True)
            await self._git("init", "--quiet", "--bare", str(self._repo), cwd=self.base_dir)
        await self._git("config", "remote.origin.url", self.url)
        ref = f"refs/remotes/origin/{self.branch}"
        await self._git(
            "fetch",
            "--quiet",
            "--no-tags",
            "--prune",
            "origin",
            f"+refs/heads/{self.branch}:{ref}",
            what=f"fetching branch {self.branch!r} from {redact_url(self.url)}",
        )
        out = await self._git("log", "-1", "--format=%H%x00%s", f"{ref}^{{commit}}")
        sha, _, subject = out.rstrip("\n").partition("\x00")
        return sha, subject

    async def _checkout(self, sha: str, subject: str) -> None:
        """Materialise ``sha`` completely, then point ``current`` at it (atomic rename)."""
        tree = self._checkouts / sha
        if tree.exists():  # left over from an interrupted sync: it may be incomplete
            await self._remove_worktree(tree)
        self._checkouts.mkdir(exist_ok=True)
        await self._git("worktree", "prune")
        await self._git(
            "worktree", "add", "--quiet", "--force", "--detach", str(tree), sha,
            what=f"checking out {sha[:12]}",
        )  # fmt: skip
        (self._checkouts / f"{sha}.subject").write_text(subject + "\n")
        if self.path != "." and not (tree / self.path).is_dir():
            await self._remove_worktree(tree)
            raise GitSyncError(
                f"commit {sha[:12]} ({subject}) has no directory {self.path!r}", last_good=None
            )
        link = self.base_dir / "current.new"
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(Path("checkouts") / sha)
        os.replace(link, self._current)

    async def _prune_checkouts(self, keep: set[str]) -> None:
        for tree in self._checkouts.iterdir():
            sha = tree.name.removesuffix(".subject")
            if sha in keep:
                continue
            if tree.is_dir():
                await self._remove_worktree(tree)
            else:
                tree.unlink(missing_ok=True)

    async def _remove_worktree(self, tree: Path) -> None:
        try:
            await self._git("worktree", "remove", "--force", str(tree))
        except GitSyncError:
            shutil.rmtree(tree, ignore_errors=True)
            await self._git("worktree", "prune")

    # --- running git ------------------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = git_env()
        if self.ssh_key_file is not None:
            env["GIT_SSH_COMMAND"] = shlex.join(
                [
                    "ssh",
                    "-i",
                    str(self.ssh_key_file),
                    "-o",
                    "IdentitiesOnly=yes",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "StrictHostKeyChecking=accept-new",
                    "-o",
                    f'UserKnownHostsFile="{self.base_dir / "known_hosts"}"',  # ssh splits on spaces
                ]
            )
        return env

    async def _git(self, *args: str, cwd: Path | None = None, what: str = "") -> str:
        """Run git in the bare repository; stdout, or GitSyncError with git's own words."""
        argv = ["git", *args] if cwd is not None else ["git", f"--git-dir={self._repo}", *args]
        what = what or f"git {args[0]}"
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd or self.base_dir,
                env=self._env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # so a timeout kills ssh and git's helpers too
            )
        except OSError as exc:
            raise GitSyncError(f"{what}: cannot run git: {exc}", last_good=None) from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            raise GitSyncError(
                f"{what}: timed out after {self.timeout:g}s", last_good=None
            ) from None
        finally:
            if proc.returncode is None:  # timed out or cancelled: end git and its helpers
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if proc.returncode != 0:
            detail = " ".join(err.decode(errors="replace").split()) or f"exit {proc.returncode}"
            raise GitSyncError(f"{what}: {redact_url_in(detail, self.url)}", last_good=None)
        return out.decode(errors="replace")


def redact_url_in(text: str, url: str) -> str:
    """``text`` with ``url`` (which may hold a token) replaced by its redacted form."""
    return text.replace(url, redact_url(url)) if url != redact_url(url) else text


OnRevision = Callable[[Revision], Awaitable[None] | None]
OnError = Callable[[GitSyncError], Awaitable[None] | None]


class GitPoller:
    """Syncs every ``interval`` seconds and says what changed, through callbacks.

    ``on_revision``: the head moved (the reconcile trigger). ``on_error``: a sync failed (the last
    good revision stays in force). ``on_recovered``: a sync worked again after failing. Each may
    be a plain function or a coroutine; an error in one is logged and never stops the polling.
    """

    def __init__(
        self,
        sync: GitRepoSync,
        interval: float,
        on_revision: OnRevision,
        on_error: OnError | None = None,
        on_recovered: OnRevision | None = None,
    ) -> None:
        self.sync = sync
        self.interval = interval
        self._on_revision = on_revision
        self._on_error = on_error
        self._on_recovered = on_recovered
        self._task: asyncio.Task[None] | None = None
        self._reported: str | None = None
        self.last_error: GitSyncError | None = None
        self.last_sync: float | None = None  # time.time() of the last successful sync

    async def fetch_now(self) -> Revision:
        """Sync once (``POST /api/reconcile``, startup, ``apply``); calls back like a tick.

        Raises :class:`GitSyncError` after reporting it to ``on_error``.
        """
        try:
            revision = await self.sync.sync()
        except GitSyncError as exc:
            self.last_error = exc
            log.warning("git sync failed: %s", exc)
            await _call(self._on_error, exc)
            raise
        failed_before, self.last_error = self.last_error is not None, None
        self.last_sync = time.time()
        if revision.sha != self._reported:
            self._reported = revision.sha
            log.info("git revision %s (%s)", revision.short_sha, revision.subject)
            await _call(self._on_revision, revision)
        if failed_before:
            await _call(self._on_recovered, revision)
        return revision

    def start(self, now: bool = False) -> None:
        """Sync every ``interval`` in the running loop, the first time at once (``now``) or
        after one interval."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(now), name="modelplane-git-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, now: bool) -> None:
        while True:
            if not now:
                await asyncio.sleep(self.interval)
            now = False
            try:
                await self.fetch_now()
            except GitSyncError:
                pass  # reported by fetch_now; the next tick retries
            except Exception:  # (a full disk, a permission error): never let the poller die
                log.exception("git sync failed")


async def _call(callback: Callable[..., object] | None, arg: object) -> None:
    """Call a plain or async callback; its errors are logged, never kill the poller."""
    if callback is None:
        return
    try:
        result = callback(arg)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("git poller callback %r failed", callback)
