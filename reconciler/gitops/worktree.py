"""What git says about the manifests directory: the commit a generation was applied from.

Everything goes through the ``git`` command (no library), read-only, with a timeout, and never
raises: when git is missing, the directory is not in a work tree, or git refuses (for example a
repository owned by another user, "dubious ownership"), :func:`git_info` returns ``None`` and the
reason is logged at debug level. A generation then simply records no commit.

*Dirty* is scoped to the manifests directory, not the whole repository: what matters is whether
the manifests that were applied equal the committed ones. An edited README elsewhere in the repo
does not make a generation dirty; an uncommitted, untracked or even git-ignored ``*.yaml`` under
the manifests directory does (the loader reads it, so it is applied without being in the commit).

:func:`changes_between` is the pure part of ``modelplane history``: which models a generation
added, changed or removed compared with the one before it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST_SUFFIXES = (".yaml", ".yml")
# Variables that would point git at another repository than the directory we ask about.
_REPO_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_PREFIX")


@dataclass(frozen=True)
class GitInfo:
    """The state of the git work tree that holds a manifests directory."""

    toplevel: Path  # root of the work tree
    sha: str | None  # HEAD commit; None in a repository without commits yet
    branch: str | None  # None on a detached HEAD
    subject: str  # first line of the HEAD commit message ("" without commits)
    dirty: bool  # uncommitted changes under the manifests directory
    dirty_files: tuple[str, ...] = ()  # paths relative to the toplevel, as git prints them

    @property
    def short_sha(self) -> str:
        return (self.sha or "")[:12]

    def describe(self) -> str:
        """``"a1b2c3d4e5f6 (subject)"``, plus ``" + uncommitted changes"`` when dirty."""
        text = f"{self.short_sha} ({self.subject})" if self.sha else "no commits yet"
        return text + (" + uncommitted changes" if self.dirty else "")


def git_env() -> dict[str, str]:
    """The environment for a git subprocess: stable output, no prompts, no index lock."""
    env = {k: v for k, v in os.environ.items() if k not in _REPO_ENV}
    env.update(LC_ALL="C", GIT_TERMINAL_PROMPT="0", GIT_OPTIONAL_LOCKS="0")
    return env


def _git(cwd: Path, *args: str, timeout: float) -> str | None:
    """Run one read-only git command; its stdout, or None (with the reason logged)."""
    try:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=git_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("git %s in %s: %s", " ".join(args), cwd, exc)
        return None
    if proc.returncode != 0:
        log.debug("git %s in %s: %s", " ".join(args), cwd, proc.stderr.strip())
        return None
    return proc.stdout


def git_info(path: str | os.PathLike[str], *, timeout: float = 5.0) -> GitInfo | None:
    """The git state of the work tree holding ``path``; None when there is none (never raises).

    ``path`` is the manifests directory (or a file in it); dirtiness is scoped to it.
    """
    if shutil.which("git") is None:
        log.debug("git is not installed")
        return None
    target = Path(path).resolve()
    cwd = target if target.is_dir() else target.parent
    if not cwd.is_dir():
        return None
    top = _git(cwd, "rev-parse", "--show-toplevel", timeout=timeout)
    if not top:  # not a work tree, a bare repository's insides, or git refused
        return None
    head = _git(cwd, "log", "-1", "--format=%H%x00%s", timeout=timeout)
    sha, _, subject = (head or "").rstrip("\n").partition("\x00")
    branch = _git(cwd, "symbolic-ref", "--quiet", "--short", "HEAD", timeout=timeout)
    dirty_files = _dirty_files(cwd, target, timeout=timeout)
    return GitInfo(
        toplevel=Path(top.strip()),
        sha=sha or None,
        branch=branch.strip() if branch else None,
        subject=subject,
        dirty=bool(dirty_files),
        dirty_files=dirty_files,
    )


def _dirty_files(cwd: Path, target: Path, *, timeout: float) -> tuple[str, ...]:
    """Changed, untracked, and ignored-but-loaded (``*.yaml``) files under ``target``."""
    out = _git(
        cwd,
        "--literal-pathspecs",
        "status",
        "--porcelain=v1",
        "-z",
        "--untracked-files=all",
        "--ignored=traditional",  # with --untracked-files=all: each ignored file, not dirs
        "--",
        str(target),
        timeout=timeout,
    )
    if out is None:
        return ()
    files: list[str] = []
    entries = iter(out.split("\x00"))
    for entry in entries:
        if len(entry) < 4:
            continue
        code, name = entry[:2], entry[3:]
        if code[0] in "RC":  # a rename/copy is followed by its source path: skip it
            next(entries, None)
        if code == "!!" and not name.endswith(MANIFEST_SUFFIXES):
            continue  # ignored, and not something the loader reads
        files.append(name)
    return tuple(files)


def why_not_git(path: str | os.PathLike[str], *, timeout: float = 5.0) -> str:
    """Why :func:`git_info` returned None for ``path``, in git's own words where it has some.

    The case worth telling apart is "dubious ownership": the repository belongs to another user
    (a mounted volume, a checkout made by root) and git refuses to read it until it is listed in
    ``safe.directory``.
    """
    if shutil.which("git") is None:
        return "git is not installed"
    target = Path(path).resolve()
    cwd = target if target.is_dir() else target.parent
    if not cwd.is_dir():
        return f"{cwd} does not exist"
    try:
        proc = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=cwd,
            env=git_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"git failed: {exc}"
    if proc.returncode == 0:
        return "git answers (a later git command failed or timed out)"
    first = proc.stderr.strip().splitlines()[0] if proc.stderr.strip() else ""
    if "dubious ownership" in first:
        return first.removeprefix("fatal: ")
    return "not inside a git work tree"


async def git_info_async(path: str | os.PathLike[str], *, timeout: float = 5.0) -> GitInfo | None:
    """:func:`git_info` off the event loop."""
    return await asyncio.to_thread(git_info, path, timeout=timeout)


@dataclass(frozen=True)
class Changes:
    """Models a generation added, changed (spec hash differs) or removed; each sorted."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def summary(self) -> str:
        """``"+a +b ~c -d"`` for a history line; ``"no model changes"`` when empty."""
        parts = [f"+{n}" for n in self.added]
        parts += [f"~{n}" for n in self.changed]
        parts += [f"-{n}" for n in self.removed]
        return " ".join(parts) or "no model changes"


def changes_between(old_models: Mapping[str, str], new_models: Mapping[str, str]) -> Changes:
    """Compare two generations' ``{model name: spec hash}`` maps (pure)."""
    return Changes(
        added=tuple(sorted(new_models.keys() - old_models.keys())),
        changed=tuple(
            sorted(
                n for n in new_models.keys() & old_models.keys() if new_models[n] != old_models[n]
            )
        ),
        removed=tuple(sorted(old_models.keys() - new_models.keys())),
    )
