"""Pull mode (Node.git) against a local bare repository over file://: modelplane keeps its own
clone under stateDir, follows new commits and force-pushes, keeps the last good revision when a
fetch fails, and keeps the last valid version of a document a bad commit breaks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.gitops.support import backend_pid, cli, kinds, node_doc, wait_for
from tests.helpers.manifests import ManifestDir, fake_engine_doc, model_doc
from tests.helpers.service import ServiceProcess, start_service
from tests.ops.gitrepo import git

INTERVAL = 1.0  # Node.git.interval in these tests


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def remote(tmp_path: Path, repo: Path) -> Path:
    """The bare repository the team pushes to; ``repo`` has it as origin."""
    bare = tmp_path / "remote.git"
    git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(bare))
    git(repo, "remote", "add", "origin", str(bare))
    return bare


@pytest.fixture
def boot(tmp_path: Path, remote: Path) -> ManifestDir:
    """The directory given to modelplane: only the Node, which names the repository."""
    boot = ManifestDir(tmp_path / "boot")
    git_spec = {"url": remote.as_uri(), "branch": "main", "interval": "1s", "path": "manifests"}
    boot.write("node.yaml", node_doc(git=git_spec))
    return boot


def push(repo: Path, *flags: str) -> None:
    git(repo, "push", "--quiet", *flags, "origin", "main")


def revision(svc: ServiceProcess) -> str | None:
    return svc.status()["git"]["revision"]


def test_pull_mode_follows_commits_keeps_last_good_and_follows_force_pushes(
    repo: Path, remote: Path, boot: ManifestDir, state: Path
) -> None:
    team = ManifestDir(repo / "manifests")
    team.write("engine.yaml", fake_engine_doc())
    team.write("a.yaml", model_doc("a", pin=True))
    sha1 = commit_all(repo, "add a")
    push(repo)

    with start_service(boot.root, state) as svc:
        svc.wait_phase("a", "Ready")
        body = svc.status()
        assert body["git"]["revision"] == sha1 and body["git"]["error"] is None
        assert body["applied"]["commit"] == sha1 and body["applied"]["pulled"] is True
        assert body["applied"]["subject"] == "add a" and body["applied"]["branch"] == "main"
        assert body["warnings"] == []
        assert (state / "git").is_dir(), "the clone lives under stateDir"
        a_pid = backend_pid(svc, "a")

        # a new commit is applied within an interval (bounded generously: the box is shared)
        team.write("b.yaml", model_doc("b", pin=True))
        sha2 = commit_all(repo, "add b")
        push(repo)
        wait_for(lambda: revision(svc) == sha2, "the new commit", timeout=10 * INTERVAL, svc=svc)
        svc.wait_phase("b", "Ready")
        assert svc.status()["applied"]["commit"] == sha2

        # a bad commit: the broken document keeps its last valid version, and it is reported
        team.write("a.yaml", model_doc("a", pin=True, stayWarn="5m"))
        sha3 = commit_all(repo, "typo in a")
        push(repo)
        body = wait_for(
            lambda: (s := svc.status())["applied"]["commit"] == sha3 and s["errors"] and s,
            "bad commit",
            svc=svc,
        )
        (error,) = body["errors"]
        assert "a.yaml" in error and "unknown field spec.stayWarn" in error
        a = svc.model("a")
        assert a["sync"] == "Stale" and a["phase"] == "Ready"
        assert backend_pid(svc, "a") == a_pid, "a bad commit must not restart what runs"
        assert "Invalid" in kinds(svc)

        # a force-push (the bad commit rewritten) is followed: the remote is the truth
        git(repo, "reset", "--quiet", "--hard", sha2)
        team.write("b.yaml", model_doc("b", pin=True, args=["--tokens", "3"]))
        sha4 = commit_all(repo, "b: 3 tokens")
        push(repo, "--force")
        body = wait_for(
            lambda: (s := svc.status())["git"]["revision"] == sha4 and s, "force-push", svc=svc
        )
        wait_for(lambda: svc.model("a")["sync"] == "Synced", "a valid again", svc=svc)
        assert svc.status()["errors"] == []
        recreated = wait_for(
            lambda: [e for e in svc.events("b") if "spec changed: args" in e["message"]],
            "b recreated",
            svc=svc,
        )
        assert recreated
        svc.wait_phase("b", "Ready")
        assert backend_pid(svc, "a") == a_pid

        # the remote goes away: the last good revision stays in force, and that is reported
        shutil.move(remote, remote.with_name("moved.git"))
        body = wait_for(
            lambda: (s := svc.status())["git"]["error"] and s, "the fetch error", svc=svc
        )
        assert body["git"]["revision"] == sha4
        assert any("fetching" in w and "stays" in w for w in body["warnings"]), body["warnings"]
        failed = wait_for(
            lambda: [e for e in svc.events() if e["kind"] == "GitSyncFailed"], "event", svc=svc
        )
        assert len(failed) == 1
        assert f"{sha4[:12]} (b: 3 tokens) stays in force" in failed[0]["message"]
        # POST /api/reconcile fetches too, and reports the error without failing
        code, answer = svc.request("POST", "/api/reconcile")
        assert code == 200 and answer["git"]["error"]
        assert svc.model("a")["phase"] == "Ready" and backend_pid(svc, "a") == a_pid
        assert len([k for k in kinds(svc) if k == "GitSyncFailed"]) == 1, "reported once"

        shutil.move(remote.with_name("moved.git"), remote)
        wait_for(lambda: svc.status()["git"]["error"] is None, "fetching again", svc=svc)
        wait_for(lambda: "GitSyncRecovered" in kinds(svc), "GitSyncRecovered", svc=svc)
        assert svc.stop() == 0


def test_apply_syncs_once_and_a_failed_fetch_keeps_the_last_revision(
    repo: Path, remote: Path, boot: ManifestDir, state: Path
) -> None:
    team = ManifestDir(repo / "manifests")
    team.write("engine.yaml", fake_engine_doc())
    team.write("a.yaml", model_doc("a"))
    sha1 = commit_all(repo, "add a")
    push(repo)

    done = cli(state, "apply", boot.root)
    assert done.returncode == 0, done.stderr
    status = json.loads(cli(state, "status", "--dir", boot.root, "--json").stdout)
    assert [m["name"] for m in status["models"]] == ["a"]
    assert status["applied"]["commit"] == sha1 and status["applied"]["pulled"] is True

    team.write("b.yaml", model_doc("b"))
    sha2 = commit_all(repo, "add b")
    push(repo)
    plan = cli(state, "plan", boot.root)  # plan reads what is checked out: no fetch
    assert plan.returncode == 0, plan.stderr
    assert cli(state, "apply", boot.root).returncode == 0
    status = json.loads(cli(state, "status", "--dir", boot.root, "--json").stdout)
    assert [m["name"] for m in status["models"]] == ["a", "b"]
    assert status["applied"]["commit"] == sha2

    shutil.rmtree(remote)
    done = cli(state, "apply", boot.root)
    assert done.returncode == 1, "a fetch failure is not a converged apply"
    assert "fetching" in done.stderr and f"revision {sha2[:12]} (add b) stays" in done.stderr
    status = json.loads(cli(state, "status", "--dir", boot.root, "--json").stdout)
    assert [m["name"] for m in status["models"]] == ["a", "b"]
    events = cli(state, "events", "--dir", boot.root).stdout
    assert "GitSyncFailed" in events
