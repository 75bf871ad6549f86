"""The mirror: box-to-box over a real downloaded cache, and the HTTP details clients rely on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from huggingface_hub import HfApi, hf_hub_download

from reconciler.weights import HubSettings, MirrorServer, check_snapshot, fetch

from .hubgen import HubRepos, config_bytes, safetensors_bytes

WEIGHTS = safetensors_bytes(5000)


@pytest.fixture
def box_a(cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos) -> Path:
    """Box A's cache after downloading two revisions of a repo from the (internet) hub."""
    repos.commit(
        "org/m", {"config.json": config_bytes(v=1), "model.safetensors": WEIGHTS}, tags=("v1",)
    )
    fetch(cache, "org/m", "v1", None, settings)
    repos.commit(
        "org/m",
        {
            "config.json": config_bytes(v=2),
            "model.safetensors": WEIGHTS,
            "extra/notes.txt": b"hello",
        },
    )
    fetch(cache, "org/m", "main", None, settings)
    return cache


@pytest.fixture
def mirror(box_a: Path) -> Iterator[MirrorServer]:
    with MirrorServer(box_a, record=True) as server:
        yield server


def test_box_to_box(box_a: Path, mirror: MirrorServer, hub: MirrorServer, tmp_path: Path) -> None:
    hub.stop()  # box B cannot reach the internet hub: only box A's mirror
    box_b = tmp_path / "box-b"
    settings_b = HubSettings(endpoint=mirror.url)

    latest = fetch(box_b, "org/m", "main", None, settings_b)
    pinned = fetch(box_b, "org/m", "v1", ["*.json"], settings_b)

    assert check_snapshot(box_b, latest.resolution, deep=True).complete
    assert (latest.snapshot_dir / "extra" / "notes.txt").read_bytes() == b"hello"
    assert (latest.snapshot_dir / "model.safetensors").read_bytes() == WEIGHTS
    assert (pinned.snapshot_dir / "config.json").read_bytes() == config_bytes(v=1)
    a_commits = {p.name for p in (box_a / "models--org--m" / "snapshots").iterdir()}
    assert {latest.resolution.commit, pinned.resolution.commit} == a_commits


def test_plain_huggingface_hub_calls_work_against_it(mirror: MirrorServer, tmp_path: Path) -> None:
    api = HfApi(endpoint=mirror.url)
    tree = {f.path for f in api.list_repo_tree("org/m", recursive=True, token=False)}
    assert tree == {"config.json", "model.safetensors", "extra", "extra/notes.txt"}
    top = {f.path for f in api.list_repo_tree("org/m", token=False)}
    assert top == {"config.json", "model.safetensors", "extra"}
    path = hf_hub_download(
        "org/m", "extra/notes.txt", cache_dir=tmp_path / "c", endpoint=mirror.url, token=False
    )
    assert Path(path).read_bytes() == b"hello"


def test_resolve_headers_head_and_ranges(mirror: MirrorServer) -> None:
    url = f"{mirror.url}/org/m/resolve/main/model.safetensors"
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    with httpx.Client() as client:
        head = client.head(url)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["Content-Length"] == str(len(WEIGHTS))
        assert head.headers["X-Linked-Size"] == str(len(WEIGHTS))
        assert head.headers["ETag"] == head.headers["X-Linked-Etag"] == f'"{sha}"'
        assert head.headers["Accept-Ranges"] == "bytes"
        commit = head.headers["X-Repo-Commit"]
        assert len(commit) == 40

        part = client.get(url, headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == WEIGHTS[10:20]
        assert part.headers["Content-Range"] == f"bytes 10-19/{len(WEIGHTS)}"
        tail = client.get(url, headers={"Range": "bytes=-7"})
        assert tail.status_code == 206 and tail.content == WEIGHTS[-7:]
        rest = client.get(url, headers={"Range": f"bytes={len(WEIGHTS) - 3}-"})
        assert rest.content == WEIGHTS[-3:]
        beyond = client.get(url, headers={"Range": f"bytes={len(WEIGHTS)}-"})
        assert beyond.status_code == 416
        assert beyond.headers["Content-Range"] == f"bytes */{len(WEIGHTS)}"

        small = client.head(f"{mirror.url}/org/m/resolve/{commit}/config.json")
        assert "X-Linked-Etag" not in small.headers  # a git-stored file: ETag is its blob id
        assert len(small.headers["ETag"].strip('"')) == 40


def test_errors_use_the_hub_error_codes(mirror: MirrorServer) -> None:
    with httpx.Client(base_url=mirror.url) as client:
        no_repo = client.get("/api/models/org/nope")
        assert (no_repo.status_code, no_repo.headers["X-Error-Code"]) == (404, "RepoNotFound")
        no_rev = client.get("/api/models/org/m/revision/nope")
        assert no_rev.headers["X-Error-Code"] == "RevisionNotFound"
        no_file = client.head("/org/m/resolve/main/missing.bin")
        assert no_file.headers["X-Error-Code"] == "EntryNotFound"
        assert len(no_file.headers["X-Repo-Commit"]) == 40
        escape = client.get("/org/m/resolve/main/..%2F..%2F..%2F..%2Fetc%2Fpasswd")
        assert escape.status_code == 404
        assert client.post("/api/models/org/m/preupload/main").status_code == 405
        assert client.delete("/org/m/resolve/main/config.json").status_code == 405


def test_binds_loopback_by_default(box_a: Path) -> None:
    with MirrorServer(box_a) as server:
        assert server.httpd.server_address[0] == "127.0.0.1"


def test_a_cache_of_copies_is_served_with_content_hashes(
    repos: HubRepos, hub: MirrorServer, tmp_path: Path
) -> None:
    commit = repos.commit("org/copies", {"model.safetensors": WEIGHTS})
    pointer = repos.root / "models--org--copies" / "snapshots" / commit / "model.safetensors"
    data = pointer.read_bytes()
    pointer.unlink()
    pointer.write_bytes(data)  # what HF_HUB_DISABLE_SYMLINKS (or Windows) leaves behind

    result = fetch(tmp_path / "b", "org/copies", "main", None, HubSettings(endpoint=hub.url))

    assert result.resolution.files[0].sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert (result.snapshot_dir / "model.safetensors").read_bytes() == WEIGHTS
