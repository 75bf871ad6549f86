"""Generations record the git commit, branch and dirty state of the manifests; ``status`` says
what is applied and warns about uncommitted manifests; ``history`` shows what changed."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.gitops.support import cli, wait_for, write_box
from tests.helpers.manifests import ManifestDir, model_doc
from tests.helpers.service import start_service
from tests.ops.gitrepo import git


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def status_json(state: Path, manifests: ManifestDir) -> dict:
    done = cli(state, "status", "--dir", manifests.root, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_cli_apply_records_commits_and_dirty_state_and_history_shows_changes(
    repo: Path, state: Path
) -> None:
    manifests = ManifestDir(repo / "manifests")
    write_box(manifests)
    manifests.write("a.yaml", model_doc("a"))
    sha1 = commit(repo, "add a")
    assert cli(state, "apply", manifests.root).returncode == 0

    applied = status_json(state, manifests)["applied"]
    assert (applied["commit"], applied["branch"], applied["subject"]) == (sha1, "main", "add a")
    assert applied["dirty"] is False and applied["pulled"] is False
    table = cli(state, "status", "--dir", manifests.root)
    assert re.search(rf"^applied {sha1[:12]} \(add a\) at \d{{4}}-\d\d-\d\d ", table.stdout, re.M)
    assert "warning" not in table.stderr

    # an uncommitted model is applied, recorded as dirty, and status warns about it
    manifests.write("b.yaml", model_doc("b"))
    assert cli(state, "apply", manifests.root).returncode == 0
    body = status_json(state, manifests)
    assert body["applied"]["commit"] == sha1 and body["applied"]["dirty"] is True
    assert re.fullmatch(
        rf"applied {sha1[:12]} \(add a\) at [\d-]+ [\d:]+, with uncommitted changes",
        body["applied"]["text"],
    )
    (warning,) = body["warnings"]
    assert "uncommitted changes" in warning and "manifests/b.yaml" in warning
    table = cli(state, "status", "--dir", manifests.root)
    assert "warning: uncommitted changes" in table.stderr and "manifests/b.yaml" in table.stderr
    # the time and the warning each stay on their own line
    assert re.search(r" at [\d-]+ [\d:]+, with uncommitted changes$", table.stdout, re.M)
    assert re.search(r"^warning: uncommitted changes", table.stderr, re.M)

    # committing it is a new generation (same documents, now from a commit)
    sha2 = commit(repo, "add b")
    assert cli(state, "apply", manifests.root).returncode == 0
    body = status_json(state, manifests)
    assert (body["applied"]["commit"], body["applied"]["dirty"]) == (sha2, False)
    assert body["warnings"] == []
    # applying the same commit again is not a new generation
    assert cli(state, "apply", manifests.root).returncode == 0
    assert status_json(state, manifests)["applied"]["generation"] == body["applied"]["generation"]

    manifests.write("a.yaml", model_doc("a", args=["--tokens", "3"]))
    manifests.remove("b.yaml")
    sha3 = commit(repo, "change a, remove b")
    assert cli(state, "apply", manifests.root).returncode == 0

    history = cli(state, "history", "--dir", manifests.root)
    assert history.returncode == 0, history.stderr
    when = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    rows = [when.sub("T", " ".join(line.split())) for line in history.stdout.splitlines()[1:]]
    assert rows == [
        f"1 T {sha1[:12]} ok +a [add a]",
        f"2 T {sha1[:12]} (dirty) ok +b [add a]",
        f"3 T {sha2[:12]} ok no model changes [add b]",
        f"4 T {sha3[:12]} ok ~a -b [change a, remove b]",
    ], history.stdout


def test_run_records_each_commit_and_warns_about_uncommitted_changes(
    repo: Path, state: Path
) -> None:
    manifests = ManifestDir(repo / "manifests")
    write_box(manifests)
    manifests.write("a.yaml", model_doc("a"))
    sha1 = commit(repo, "add a")
    with start_service(manifests.root, state) as svc:
        body = svc.status()
        assert body["applied"]["commit"] == sha1 and body["applied"]["dirty"] is False
        assert body["warnings"] == []

        manifests.write("b.yaml", model_doc("b"))  # the watcher applies it, uncommitted

        def dirty_with_b() -> dict | None:
            body = svc.status()
            names = {m["name"] for m in body["models"]}
            return body if body["applied"]["dirty"] and names == {"a", "b"} else None

        body = wait_for(dirty_with_b, "dirty generation with b", svc=svc)
        assert body["applied"]["commit"] == sha1
        assert any("manifests/b.yaml" in w for w in body["warnings"]), body["warnings"]

        # a commit changes no file under the directory: the next resync notices it
        sha2 = commit(repo, "add b")
        body = wait_for(
            lambda: (s := svc.status())["applied"]["commit"] == sha2 and s, "new commit", svc=svc
        )
        assert body["applied"]["dirty"] is False and body["warnings"] == []
        generation = body["applied"]["generation"]
        wait_for(
            lambda: any(
                e["kind"] == "Applied"
                and e["message"].startswith(f"generation {generation} from {sha2[:12]} (add b)")
                for e in svc.events()
            ),
            "the Applied event",
            svc=svc,
        )
        assert svc.stop() == 0

    history = cli(state, "history", "--dir", manifests.root).stdout
    line = rf"^3 .* {sha2[:12]} +applied +no model changes +\[add b\] *$"
    assert re.search(line, history, re.M), history
