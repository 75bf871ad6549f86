"""gitinfo against real git repositories the tests make."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.gitops import worktree as gitinfo
from reconciler.gitops.worktree import (
    Changes,
    changes_between,
    git_info,
    git_info_async,
    why_not_git,
)
from tests.ops.gitrepo import commit_file, git


def test_clean_repo_reports_sha_branch_subject(work_repo: Path) -> None:
    info = git_info(work_repo / "manifests")
    assert info is not None
    assert info.sha == git(work_repo, "rev-parse", "HEAD")
    assert info.branch == "main"
    assert info.subject == "add model a"
    assert info.toplevel == work_repo.resolve()
    assert not info.dirty
    assert info.describe() == f"{info.sha[:12]} (add model a)"


def test_new_commit_and_branch_are_seen(work_repo: Path) -> None:
    git(work_repo, "checkout", "--quiet", "-b", "feature")
    sha = commit_file(work_repo, "manifests/b.yaml", "kind: Model\n", "add b\n\nbody text")
    info = git_info(work_repo / "manifests")
    assert info is not None
    assert (info.sha, info.branch, info.subject) == (sha, "feature", "add b")


def test_detached_head_has_no_branch(work_repo: Path) -> None:
    git(work_repo, "checkout", "--quiet", "--detach")
    info = git_info(work_repo / "manifests")
    assert info is not None and info.branch is None and info.sha


@pytest.mark.parametrize(
    "change",
    ["modify", "untracked", "ignored-yaml", "staged-delete"],
)
def test_changes_under_the_manifests_dir_are_dirty(work_repo: Path, change: str) -> None:
    manifests = work_repo / "manifests"
    if change == "modify":
        (manifests / "a.yaml").write_text("kind: Engine\n")
        expected = "manifests/a.yaml"
    elif change == "untracked":
        (manifests / "new.yaml").write_text("kind: Model\n")
        expected = "manifests/new.yaml"
    elif change == "ignored-yaml":  # the loader reads it although git ignores it
        commit_file(work_repo, ".gitignore", "*.local.yaml\n", "ignore local files")
        (manifests / "x.local.yaml").write_text("kind: Model\n")
        expected = "manifests/x.local.yaml"
    else:
        git(work_repo, "rm", "--quiet", "manifests/a.yaml")
        expected = "manifests/a.yaml"
    info = git_info(manifests)
    assert info is not None and info.dirty
    assert info.dirty_files == (expected,)
    assert info.describe().endswith("+ uncommitted changes")


def test_changes_outside_the_manifests_dir_are_not_dirty(work_repo: Path) -> None:
    commit_file(work_repo, ".gitignore", "*.log\n", "ignore logs")
    (work_repo / "README.md").write_text("notes\n")
    (work_repo / "manifests" / "debug.log").write_text("ignored, not a manifest\n")
    assert not git_info(work_repo / "manifests").dirty  # type: ignore[union-attr]
    whole = git_info(work_repo)
    assert whole is not None and whole.dirty_files == ("README.md",)


def test_repo_without_commits(tmp_path: Path) -> None:
    git(tmp_path, "init", "--quiet", "-b", "main")
    (tmp_path / "m.yaml").write_text("kind: Model\n")
    info = git_info(tmp_path)
    assert info is not None
    assert info.sha is None and info.branch == "main" and info.dirty
    assert info.describe() == "no commits yet + uncommitted changes"


def test_not_a_repo_or_missing_dir_or_no_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, work_repo: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # don't find a repo above tmp
    assert git_info(plain) is None
    assert why_not_git(plain) == "not inside a git work tree"
    assert git_info(tmp_path / "does-not-exist" / "x") is None
    assert why_not_git(tmp_path / "does-not-exist" / "x").endswith("does-not-exist does not exist")
    monkeypatch.setattr(gitinfo.shutil, "which", lambda name: None)
    assert git_info(work_repo) is None
    assert why_not_git(work_repo) == "git is not installed"


def test_git_dir_in_the_environment_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, work_repo: Path
) -> None:
    """Run from a git hook, GIT_DIR points elsewhere; we still describe the manifests' repo."""
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "--quiet")
    monkeypatch.setenv("GIT_DIR", str(other / ".git"))
    info = git_info(work_repo / "manifests")
    assert info is not None and info.subject == "add model a"


async def test_async_wrapper(work_repo: Path) -> None:
    info = await git_info_async(work_repo)
    assert info is not None and info.branch == "main"


def test_changes_between() -> None:
    old = {"a": "h1", "b": "h2", "c": "h3"}
    new = {"b": "h2", "c": "h3-new", "d": "h4", "e": "h5"}
    changes = changes_between(old, new)
    assert changes == Changes(added=("d", "e"), changed=("c",), removed=("a",))
    assert changes.summary() == "+d +e ~c -a"
    assert bool(changes)
    same = changes_between(old, dict(old))
    assert not same and same.summary() == "no model changes"
    assert changes_between({}, {"x": "1"}).added == ("x",)
