"""Branch, tag and sha revisions; a branch that moves upstream; hub errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.weights import HubError, HubSettings, MirrorServer, fetch, resolve, resolve_cached
from reconciler.weights.layout import read_ref

from .hubgen import HubRepos, config_bytes, safetensors_bytes


def _files(version: int) -> dict[str, bytes]:
    return {
        "config.json": config_bytes(version=version),
        "model.safetensors": safetensors_bytes(1000, seed=version),
    }


def test_branch_tag_and_sha_resolve_to_the_commit(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    v1 = repos.commit("org/m", _files(1), tags=("v1.0",))
    v2 = repos.commit("org/m", _files(2))

    assert resolve(cache, "org/m", "main", None, settings).commit == v2
    assert resolve(cache, "org/m", "v1.0", None, settings).commit == v1
    assert resolve(cache, "org/m", v1, None, settings).commit == v1
    lfs = {f.path: f for f in resolve(cache, "org/m", v1, None, settings).files}
    assert lfs["model.safetensors"].sha256 is not None  # LFS metadata from the hub
    assert lfs["config.json"].sha256 is None and lfs["config.json"].blob_id


def test_a_moved_branch_gives_a_new_commit_and_snapshot(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    v1 = repos.commit("org/m", _files(1))
    first = fetch(cache, "org/m", "main", None, settings)
    v2 = repos.commit("org/m", _files(2))

    second = fetch(cache, "org/m", "main", None, settings)

    assert (first.resolution.commit, second.resolution.commit) == (v1, v2)
    assert second.snapshot_dir != first.snapshot_dir
    assert (second.snapshot_dir / "model.safetensors").read_bytes() == _files(2)[
        "model.safetensors"
    ]
    assert (first.snapshot_dir / "config.json").read_bytes() == _files(1)["config.json"]
    assert read_ref(cache, "org/m", "main") == v2
    assert resolve_cached(cache, "org/m", "main").commit == v2


def test_a_sha_pins_the_bytes_when_the_branch_moves(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    v1 = repos.commit("org/m", _files(1))
    repos.commit("org/m", _files(2))

    result = fetch(cache, "org/m", v1, None, settings)

    assert result.resolution.commit == v1
    assert (result.snapshot_dir / "config.json").read_bytes() == _files(1)["config.json"]
    assert read_ref(cache, "org/m", "main") is None  # a sha writes no ref


def test_unknown_revision_and_repo_are_clear_errors(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    repos.commit("org/m", _files(1))

    with pytest.raises(HubError, match="revision not found: org/m@nope") as err:
        resolve(cache, "org/m", "nope", None, settings)
    assert not err.value.retryable
    with pytest.raises(HubError, match="repository not found: org/missing@main"):
        resolve(cache, "org/missing", "main", None, settings)
