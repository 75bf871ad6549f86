"""Not enough disk for a download: ``Failed`` with the numbers, and the cache left untouched.

The cache lives on a real, small tmpfs (mounting one needs root; elsewhere the test is skipped
and tests/weights/test_disk.py still covers the check with a mocked free-space figure)."""

from __future__ import annotations

import hashlib
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.weights import MirrorServer
from tests.weights.hubgen import HubRepos

from .conftest import Box, hub_model

#: 512 MiB is the margin every download keeps free: a 2 KiB model fits, a 10 MiB one does not
TMPFS_SIZE = "520m"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _tree(root: Path) -> dict[str, str]:
    """Every entry under ``root``: symlink targets and file hashes."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + str(path.readlink())
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def test_too_little_disk_fails_with_the_numbers_and_touches_nothing(
    box: Box, hub: MirrorServer, repos: HubRepos, small_disk: Path
) -> None:
    repos.commit("org/small", {"small.gguf": b"s" * 2048})
    repos.commit("org/big", {"big.gguf": b"b" * 10 * 2**20})
    box.cache = small_disk / "hf"
    box.write(hub_model("small", "org/small"))
    assert box.cli("apply", box.manifests.root).code == 0
    before = _tree(small_disk)
    hub.requests.clear()
    box.write(hub_model("small", "org/small"), hub_model("big", "org/big", pin=True))

    done = box.cli("apply", box.manifests.root)

    assert done.code == 1
    reason = re.compile(
        r"needs 522\.0 MiB \(10\.0 MiB to download \+ 512\.0 MiB margin\),"
        rf" \d+\.\d MiB free on {re.escape(str(box.hub_cache))}"
    )
    assert reason.search(done.stderr), done.output
    assert "FAIL  download big" in done.stderr
    status = box.status()["big"]
    assert status["phase"] == "Failed" and reason.search(status["reason"])
    assert _tree(small_disk) == before  # nothing cached was touched, nothing half-written
    assert not [r for r in hub.requests if "/resolve/" in r.path]  # no byte was fetched
