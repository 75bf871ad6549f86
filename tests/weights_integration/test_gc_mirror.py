"""``modelplane gc`` and ``modelplane mirror`` as a user runs them."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.weights import MirrorServer
from reconciler.weights.layout import snapshot_dir
from tests.helpers.manifests import kill_recorded_backends
from tests.weights.hubgen import HubRepos

from .conftest import Box, backend_stats, hub_model


def _snapshots(box: Box, repo: str) -> set[str]:
    folder = box.hub_cache / f"models--{repo.replace('/', '--')}" / "snapshots"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_gc_lists_unreferenced_revisions_and_deletes_them_only_when_asked(
    box: Box, hub: MirrorServer, repos: HubRepos
) -> None:
    running = repos.commit("org/m", {"m.gguf": b"1" * 1000})
    old = repos.commit("org/m", {"m.gguf": b"3" * 3000})
    repos.commit("org/m", {"m.gguf": b"2" * 2000})  # main moves here
    gone = repos.commit("org/gone", {"g.gguf": b"g" * 5000})
    box.write(
        hub_model("m", "org/m", revision=running, pin=True),
        hub_model("old", "org/m", revision=old),
        hub_model("gone", "org/gone"),
    )
    assert box.cli("apply", box.manifests.root).code == 0
    endpoint = box.status()["m"]["endpoint"]
    # m now declares main (not downloaded: no prefetch) but still runs the commit it started on
    box.write(hub_model("m", "org/m", pin=False, prefetch=False))

    listed = box.cli("gc", box.manifests.root)

    assert listed.code == 0, listed.output
    rows = {line.split()[0] + "@" + line.split()[1] for line in listed.stdout.splitlines()[1:-1]}
    assert rows == {f"org/m@{old[:12]}", f"org/gone@{gone[:12]}"}
    assert "2.9 KiB" in listed.stdout and "4.9 KiB" in listed.stdout
    assert "2 unreferenced revision(s), 7.8 KiB reclaimable; run with --yes" in listed.stdout
    assert _snapshots(box, "org/m") == {running, old} and _snapshots(box, "org/gone") == {gone}

    deleted = box.cli("gc", box.manifests.root, "--yes")

    assert deleted.code == 0, deleted.output
    assert "deleted 2 unreferenced revision(s), freed 7.8 KiB" in deleted.stdout
    assert _snapshots(box, "org/m") == {running} and _snapshots(box, "org/gone") == set()
    snapshot = Path(backend_stats(endpoint)["model_path"])  # a whole-repo source: the folder
    assert (snapshot / "m.gguf").read_bytes() == b"1" * 1000
    assert "GarbageCollected" in box.events()
    again = box.cli("gc", box.manifests.root, "--yes")
    assert again.code == 0 and "nothing to collect" in again.stdout


def test_gc_refuses_an_empty_manifest_set(box: Box, hub: MirrorServer, repos: HubRepos) -> None:
    commit = repos.commit("org/m", {"m.gguf": b"1" * 1000})
    box.write(hub_model("m", "org/m"))
    assert box.cli("apply", box.manifests.root).code == 0
    box.manifests.write("models.yaml", "")

    done = box.cli("gc", box.manifests.root, "--yes")

    assert done.code == 1 and "declares no models" in done.stderr
    assert _snapshots(box, "org/m") == {commit}


@pytest.fixture
def second_box(tmp_path: Path) -> Iterator[Box]:
    other = Box(tmp_path / "second-box", "")
    other.root.mkdir(exist_ok=True)
    yield other
    kill_recorded_backends(other.state)


def test_the_mirror_command_serves_this_cache_to_another_box(
    box: Box,
    second_box: Box,
    hub: MirrorServer,
    repos: HubRepos,
    gguf_bytes: bytes,
) -> None:
    commit = repos.commit("org/tiny", {"tiny.gguf": gguf_bytes})
    box.write(hub_model("m", "org/tiny", ["*.gguf"]))
    assert box.cli("apply", box.manifests.root).code == 0
    hub.requests.clear()

    mirror = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reconciler.cli",
            "mirror",
            "--dir",
            str(box.manifests.root),
            "--listen",
            "127.0.0.1:0",
        ],
        env=box.environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert mirror.stdout is not None
        first = mirror.stdout.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+) \(read-only\)", first)
        assert found, first + (mirror.stderr.read() if mirror.poll() is not None else "")
        assert str(box.hub_cache) in first
        second_box.hub_url = found.group(1)
        second_box.write(hub_model("m", "org/tiny", ["*.gguf"], pin=True))

        done = second_box.cli("apply", second_box.manifests.root)

        assert done.code == 0, done.output
        status = second_box.status()["m"]
        assert status["revision"] == commit
        served = Path(backend_stats(status["endpoint"])["model_path"])
        assert served == snapshot_dir(second_box.hub_cache, "org/tiny", commit) / "tiny.gguf"
        assert served.read_bytes() == gguf_bytes
        assert httpx.post(f"{found.group(1)}/api/models/org/tiny").status_code == 405
        assert hub.requests == []  # the second box asked the mirror only
    finally:
        mirror.send_signal(signal.SIGTERM)
        assert mirror.wait(20) == 0
