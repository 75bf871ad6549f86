"""Pull mode against a local bare repository over a file:// URL (no network)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from reconciler.gitops.sync import (
    GitPoller,
    GitRepoSync,
    GitSyncError,
    Revision,
    clone_dir_name,
    redact_url,
)
from tests.ops.gitrepo import commit_file, git


@pytest.fixture
def remote(tmp_path: Path, work_repo: Path) -> Path:
    """A bare repository that ``work_repo`` pushes ``main`` to."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(bare))
    git(work_repo, "remote", "add", "origin", str(bare))
    git(work_repo, "push", "--quiet", "origin", "main")
    return bare


def make_sync(tmp_path: Path, remote: Path, **kw: object) -> GitRepoSync:
    return GitRepoSync(remote.as_uri(), "main", state_dir=tmp_path / "state", **kw)  # type: ignore[arg-type]


async def test_first_sync_checks_out_the_branch_head(
    tmp_path: Path, remote: Path, work_repo: Path
) -> None:
    sync = make_sync(tmp_path, remote, path="manifests")
    assert sync.current() is None
    rev = await sync.sync()
    assert rev.sha == git(work_repo, "rev-parse", "HEAD")
    assert rev.subject == "add model a" and rev.branch == "main"
    assert (rev.manifests_dir / "a.yaml").read_text() == "kind: Model\n"
    assert rev.manifests_dir == sync.base_dir / "current" / "manifests"
    assert sync.base_dir.parent == tmp_path / "state" / "git"
    assert sync.current() == rev


async def test_new_commit_is_picked_up_and_old_checkout_kept_then_pruned(
    tmp_path: Path, remote: Path, work_repo: Path
) -> None:
    sync = make_sync(tmp_path, remote)
    first = await sync.sync()
    assert await sync.sync() == first  # nothing new: same revision, no new checkout
    second_sha = commit_file(work_repo, "manifests/b.yaml", "kind: Model\n", "add model b")
    git(work_repo, "push", "--quiet", "origin", "main")
    second = await sync.sync()
    assert (second.sha, second.subject) == (second_sha, "add model b")
    assert (second.manifests_dir / "manifests" / "b.yaml").is_file()
    assert first.checkout.is_dir()  # the previous tree stays while a pass may still read it
    third_sha = commit_file(work_repo, "manifests/a.yaml", "kind: Engine\n", "change a")
    git(work_repo, "push", "--quiet", "origin", "main")
    third = await sync.sync()
    assert third.sha == third_sha
    assert (third.manifests_dir / "manifests" / "a.yaml").read_text() == "kind: Engine\n"
    assert not first.checkout.exists() and second.checkout.is_dir()


async def test_force_push_is_followed(tmp_path: Path, remote: Path, work_repo: Path) -> None:
    sync = make_sync(tmp_path, remote)
    base = git(work_repo, "rev-parse", "HEAD")
    commit_file(work_repo, "manifests/bad.yaml", "oops\n", "bad commit")
    git(work_repo, "push", "--quiet", "origin", "main")
    assert (await sync.sync()).subject == "bad commit"
    git(work_repo, "reset", "--quiet", "--hard", base)
    fixed = commit_file(work_repo, "manifests/good.yaml", "kind: Model\n", "rewritten history")
    git(work_repo, "push", "--quiet", "--force", "origin", "main")
    rev = await sync.sync()
    assert (rev.sha, rev.subject) == (fixed, "rewritten history")
    tree = rev.manifests_dir / "manifests"
    assert sorted(p.name for p in tree.iterdir()) == ["a.yaml", "good.yaml"]


async def test_removed_remote_keeps_last_good_and_reports(
    tmp_path: Path, remote: Path, work_repo: Path
) -> None:
    sync = make_sync(tmp_path, remote)
    good = await sync.sync()
    shutil.rmtree(remote)
    with pytest.raises(GitSyncError) as err:
        await sync.sync()
    assert err.value.last_good == good
    message = str(err.value)
    assert "fetching branch 'main' from file://" in message
    assert "does not appear to be a git repository" in message
    assert sync.current() == good
    assert (good.manifests_dir / "manifests" / "a.yaml").is_file()


async def test_missing_branch_and_broken_url(tmp_path: Path, remote: Path) -> None:
    no_branch = GitRepoSync(remote.as_uri(), "nope", state_dir=tmp_path / "s1")
    with pytest.raises(GitSyncError, match="couldn't find remote ref refs/heads/nope") as err:
        await no_branch.sync()
    assert err.value.last_good is None
    broken = GitRepoSync("file:///nonexistent/repo.git", "main", state_dir=tmp_path / "s2")
    with pytest.raises(GitSyncError, match="fetching branch 'main'"):
        await broken.sync()
    assert broken.current() is None


async def test_missing_path_in_commit_keeps_last_good(
    tmp_path: Path, remote: Path, work_repo: Path
) -> None:
    sync = make_sync(tmp_path, remote, path="manifests")
    good = await sync.sync()
    git(work_repo, "mv", "manifests", "renamed")
    git(work_repo, "commit", "--quiet", "-m", "move everything")
    git(work_repo, "push", "--quiet", "origin", "main")
    with pytest.raises(GitSyncError, match="has no directory 'manifests'"):
        await sync.sync()
    assert sync.current() == good
    assert (good.manifests_dir / "a.yaml").is_file()


async def test_last_good_survives_a_restart(tmp_path: Path, remote: Path) -> None:
    good = await make_sync(tmp_path, remote).sync()
    shutil.rmtree(remote)
    restarted = make_sync(tmp_path, remote)
    assert restarted.current() == good
    with pytest.raises(GitSyncError) as err:
        await restarted.sync()
    assert err.value.last_good == good


def test_path_must_stay_inside_the_repo(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be relative"):
        GitRepoSync("file:///x", state_dir=tmp_path, path="../etc")
    with pytest.raises(ValueError, match="must be relative"):
        GitRepoSync("file:///x", state_dir=tmp_path, path="/etc")


def test_names_and_redaction() -> None:
    assert redact_url("https://bot:s3cret@git.example.com/org/m.git") == (
        "https://***@git.example.com/org/m.git"
    )
    assert redact_url("git@github.com:org/m.git") == "git@github.com:org/m.git"
    name = clone_dir_name("git@github.com:org/box-manifests.git", "main")
    assert name.startswith("box-manifests-") and len(name) == len("box-manifests-") + 8
    assert clone_dir_name("git@github.com:org/box-manifests.git", "prod") != name


async def test_ssh_key_goes_into_git_ssh_command(tmp_path: Path) -> None:
    """A real ssh run: the key and options reach ssh (it fails to connect to a closed port)."""
    key = tmp_path / "id with space"
    key.write_text("not a key\n")
    sync = GitRepoSync(
        "ssh://git@127.0.0.1:1/org/repo.git",
        state_dir=tmp_path / "state",
        ssh_key_file=key,
        timeout=30,
    )
    assert "IdentitiesOnly=yes" in sync._env()["GIT_SSH_COMMAND"]
    assert f"'{key}'" in sync._env()["GIT_SSH_COMMAND"]
    with pytest.raises(GitSyncError, match=r"Connection refused|connect to host"):
        await sync.sync()


async def test_poller_calls_back_on_new_revisions_errors_and_recovery(
    tmp_path: Path, remote: Path, work_repo: Path
) -> None:
    revisions: asyncio.Queue[Revision] = asyncio.Queue()
    errors: list[GitSyncError] = []
    recovered: list[Revision] = []

    async def on_revision(rev: Revision) -> None:
        await revisions.put(rev)

    poller = GitPoller(
        make_sync(tmp_path, remote), 0.2, on_revision, errors.append, recovered.append
    )
    poller.start(now=True)
    try:
        first = await asyncio.wait_for(revisions.get(), 30)
        assert first.subject == "add model a"
        new_sha = commit_file(work_repo, "manifests/c.yaml", "kind: Model\n", "add c")
        git(work_repo, "push", "--quiet", "origin", "main")
        second = await asyncio.wait_for(revisions.get(), 30)
        assert second.sha == new_sha
        assert revisions.empty()  # unchanged heads are not reported again
        assert recovered == []  # nothing failed yet
        shutil.rmtree(remote)
        with pytest.raises(GitSyncError):
            await poller.fetch_now()
        assert errors and poller.last_error is errors[-1]
        assert poller.sync.current() == second
        git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(remote))
        git(work_repo, "push", "--quiet", "origin", "main")
        assert await poller.fetch_now() == second
        assert recovered == [second] and poller.last_error is None
        assert revisions.empty()  # the head did not move while the remote was gone
    finally:
        await poller.stop()


async def test_the_poller_waits_one_interval_unless_told_to_sync_now(
    tmp_path: Path, remote: Path
) -> None:
    revisions: list[Revision] = []
    poller = GitPoller(make_sync(tmp_path, remote), 3600, revisions.append)
    poller.start()
    try:
        await asyncio.sleep(0.5)
        assert revisions == [] and poller.last_sync is None
    finally:
        await poller.stop()


async def test_fetch_now_reports_once_and_a_failing_callback_does_not_kill_it(
    tmp_path: Path, remote: Path, work_repo: Path
) -> None:
    calls: list[str] = []

    def on_revision(rev: Revision) -> None:
        calls.append(rev.sha)
        raise RuntimeError("callback bug")

    poller = GitPoller(make_sync(tmp_path, remote), 3600, on_revision)
    rev = await poller.fetch_now()
    assert await poller.fetch_now() == rev
    assert calls == [rev.sha]
    assert poller.last_error is None and poller.last_sync is not None
