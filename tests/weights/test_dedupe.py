"""The same weights in two repos are stored once (hard links), and only verified copies spread."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import hf_hub_download

from reconciler.weights import HubSettings, MirrorServer, check_snapshot, dedupe_cache, fetch

from .conftest import gets
from .hubgen import HubRepos, config_bytes


def _inode(path: Path) -> int:
    return path.resolve().stat().st_ino


def test_a_blob_shared_by_two_repos_is_stored_once(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos, gguf_bytes: bytes
) -> None:
    repos.commit("org/base-GGUF", {"m-q4_k_m.gguf": gguf_bytes, "config.json": config_bytes()})
    repos.commit("fork/base-GGUF", {"fork-q4_k_m.gguf": gguf_bytes})
    a = fetch(cache, "org/base-GGUF", "main", ["*.gguf"], settings)

    b = fetch(cache, "fork/base-GGUF", "main", ["*.gguf"], settings)

    assert b.linked == ("fork-q4_k_m.gguf",) and b.downloaded == ()
    assert b.bytes_linked == len(gguf_bytes)
    assert not gets(hub, "fork-q4_k_m.gguf")  # never downloaded: taken from the cache
    assert _inode(a.model_path) == _inode(b.model_path)
    assert a.model_path.resolve().stat().st_nlink == 2
    assert check_snapshot(cache, b.resolution, deep=True).complete


def test_a_corrupt_copy_is_never_used_and_gets_repaired(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos, gguf_bytes: bytes
) -> None:
    repos.commit("org/a", {"m.gguf": gguf_bytes})
    repos.commit("org/b", {"m.gguf": gguf_bytes})
    a = fetch(cache, "org/a", "main", None, settings).snapshot_dir / "m.gguf"
    blob = a.resolve()
    blob.chmod(0o644)
    blob.write_bytes(b"rotten" + gguf_bytes[6:])

    result = fetch(cache, "org/b", "main", None, settings)
    b = result.snapshot_dir / "m.gguf"

    assert result.linked == () and result.downloaded == ("m.gguf",)  # bad copy not linked
    assert b.read_bytes() == gguf_bytes
    assert a.read_bytes() == gguf_bytes  # repaired by linking the verified copy
    assert _inode(a) == _inode(b)


def test_sweep_links_copies_made_by_other_tools(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos, gguf_bytes: bytes
) -> None:
    repos.commit("org/a", {"m.gguf": gguf_bytes})
    repos.commit("org/b", {"m.gguf": gguf_bytes})
    for repo in ("org/a", "org/b"):  # plain huggingface_hub: two separate copies
        hf_hub_download(repo, "m.gguf", cache_dir=cache, endpoint=hub.url, token=False)
    paths = [cache / f"models--org--{n}" / "blobs" for n in "ab"]
    assert len({p.stat().st_ino for d in paths for p in d.iterdir()}) == 2

    report = dedupe_cache(cache)

    assert report.linked == 1 and report.bytes_saved == len(gguf_bytes)
    assert len({p.stat().st_ino for d in paths for p in d.iterdir()}) == 1
    assert dedupe_cache(cache).linked == 0
