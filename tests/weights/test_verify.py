"""Corrupt or truncated cached files are found, deleted and fetched again; bad sources fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.weights import (
    HubSettings,
    MirrorServer,
    VerificationError,
    check_snapshot,
    ensure_downloaded,
    fetch,
    resolve,
)

from .conftest import gets
from .hubgen import HubRepos, config_bytes, safetensors_bytes

WEIGHTS = safetensors_bytes(4000)


@pytest.fixture
def repo(repos: HubRepos) -> str:
    return repos.commit("org/m", {"model.safetensors": WEIGHTS, "config.json": config_bytes()})


def _flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))


def test_corrupt_blob_is_detected_and_fetched_again(
    cache: Path, settings: HubSettings, hub: MirrorServer, repo: str
) -> None:
    first = fetch(cache, "org/m", "main", None, settings)
    weights = first.snapshot_dir / "model.safetensors"
    _flip_byte(weights.resolve(), 100)
    assert not check_snapshot(cache, first.resolution, deep=True).complete
    assert check_snapshot(cache, first.resolution, deep=False).complete  # same size: hash needed

    again = ensure_downloaded(cache, first.resolution, settings)

    (problem,) = again.refetched
    assert problem.path == "model.safetensors" and problem.reason.startswith("sha256")
    assert any("re-fetched model.safetensors: sha256" in e for e in again.events())
    assert weights.read_bytes() == WEIGHTS
    assert len(gets(hub, "model.safetensors")) == 2


def test_truncated_small_file_is_fetched_again(
    cache: Path, settings: HubSettings, hub: MirrorServer, repo: str
) -> None:
    first = fetch(cache, "org/m", "main", None, settings)
    config = (first.snapshot_dir / "config.json").resolve()
    config.chmod(0o644)
    config.write_bytes(config.read_bytes()[:5])

    again = ensure_downloaded(cache, first.resolution, settings)

    (problem,) = again.refetched
    assert problem.path == "config.json" and "truncated" in problem.reason
    assert (first.snapshot_dir / "config.json").read_bytes() == config_bytes()


def test_a_source_serving_bad_bytes_fails_and_leaves_nothing_loadable(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos, repo: str
) -> None:
    resolution = resolve(cache, "org/m", "main", None, settings)
    _flip_byte(repos.blob("org/m", "model.safetensors", WEIGHTS), 10)  # the hub's copy rots

    with pytest.raises(VerificationError, match=r"model\.safetensors .* fails verification twice"):
        ensure_downloaded(cache, resolution, settings)

    assert len(gets(hub, "model.safetensors")) == 2
    check = check_snapshot(cache, resolution, deep=True)
    assert [f.path for f in check.missing] == ["model.safetensors"]
    assert [f.path for f in check.ok] == ["config.json"]


def test_rehash_false_trusts_the_sizes_of_files_already_cached(
    cache: Path, settings: HubSettings, hub: MirrorServer, repo: str
) -> None:
    first = fetch(cache, "org/m", "main", None, settings)
    _flip_byte((first.snapshot_dir / "model.safetensors").resolve(), 100)

    trusting = ensure_downloaded(cache, first.resolution, settings, rehash=False)
    checking = ensure_downloaded(cache, first.resolution, settings)

    assert trusting.refetched == ()
    assert [p.path for p in checking.refetched] == ["model.safetensors"]
