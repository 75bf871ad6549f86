"""Not enough free space: a clear reason, and nothing already cached is touched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconciler.units import GiB
from reconciler.weights import (
    HubSettings,
    InsufficientDisk,
    MirrorServer,
    ensure_downloaded,
    fetch,
    resolve,
)
from reconciler.weights.disk import check_space, free_space

from .conftest import gets
from .hubgen import HubRepos, safetensors_bytes


def _tree(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every path under root with its inode, size and (for files) content."""
    out = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        out[str(path.relative_to(root))] = (st.st_ino, st.st_size, data)
    return out


def test_reason_reads_like_a_person_wrote_it() -> None:
    with pytest.raises(InsufficientDisk) as err:
        check_space(
            Path("/var/lib/modelplane/hf"),
            int(13.7 * GiB),
            margin=GiB // 2,
            measure=lambda _: int(9.8 * GiB),
        )
    assert str(err.value) == (
        "needs 14.2 GiB (13.7 GiB to download + 512.0 MiB margin),"
        " 9.8 GiB free on /var/lib/modelplane/hf"
    )
    assert err.value.free == int(9.8 * GiB)


def test_free_space_measures_an_existing_parent(tmp_path: Path) -> None:
    assert free_space(tmp_path / "not" / "yet" / "there") > 0


def test_insufficient_disk_fails_before_touching_the_cache(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    repos.commit("org/m", {"model.safetensors": safetensors_bytes(1000, seed=1)})
    first = fetch(cache, "org/m", "main", None, settings)
    blob = (first.snapshot_dir / "model.safetensors").resolve()
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-10])  # a truncated file that a download would replace
    repos.commit("org/m", {"model.safetensors": safetensors_bytes(50_000, seed=2)})
    resolution = resolve(cache, "org/m", "main", None, settings)
    before = _tree(cache)
    hub.requests.clear()

    with pytest.raises(InsufficientDisk, match=rf"needs .* free on {cache}$") as err:
        ensure_downloaded(cache, resolution, settings, measure=lambda _: 4096)

    assert err.value.free == 4096 and err.value.needed > 100_000
    assert _tree(cache) == before
    assert gets(hub, "") == []


def test_enough_disk_counts_only_what_is_missing(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    data = safetensors_bytes(1000)
    repos.commit("org/m", {"a.safetensors": data})
    fetch(cache, "org/m", "main", None, settings)
    repos.commit("org/m", {"a.safetensors": data, "b.safetensors": safetensors_bytes(10, seed=3)})
    resolution = resolve(cache, "org/m", "main", None, settings)
    missing = resolution.total_size - len(data)
    asked: list[Path] = []

    def measure(path: Path) -> int:
        asked.append(path)
        return missing + 1000  # exactly the missing bytes plus the margin below

    result = ensure_downloaded(cache, resolution, settings, margin=1000, measure=measure)

    assert asked == [cache]
    assert result.downloaded == ("b.safetensors",)
