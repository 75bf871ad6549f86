"""Download -> verify through the real huggingface_hub client, against the mirror as the hub."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import (
    hf_hub_download,
    scan_cache_dir,
    snapshot_download,
    try_to_load_from_cache,
)

from reconciler.weights import (
    HubError,
    HubSettings,
    HubUnreachable,
    MirrorServer,
    NoMatchingFiles,
    Progress,
    check_snapshot,
    ensure_downloaded,
    fetch,
    resolve,
)

from .conftest import gets
from .hubgen import HubRepos, config_bytes, safetensors_bytes


@pytest.fixture
def gguf_repo(repos: HubRepos, gguf_bytes: bytes) -> str:
    """A GGUF repo: two quantisations, a projector, a README and a config."""
    return repos.commit(
        "org/tiny-GGUF",
        {
            "tiny-q4_k_m.gguf": gguf_bytes,
            "tiny-q8_0.gguf": gguf_bytes + b"\0" * 64,
            "mmproj-tiny-f16.gguf": gguf_bytes[:4096],
            "README.md": b"# tiny\n",
            "config.json": config_bytes(),
        },
    )


def test_download_then_verify(
    cache: Path, settings: HubSettings, hub: MirrorServer, gguf_repo: str, gguf_bytes: bytes
) -> None:
    result = fetch(cache, "org/tiny-GGUF", "main", ["*q4_k_m*.gguf"], settings)

    assert result.resolution.commit == gguf_repo
    assert result.downloaded == ("tiny-q4_k_m.gguf",)
    assert result.bytes_downloaded == len(gguf_bytes)
    assert result.model_path.name == "tiny-q4_k_m.gguf"
    assert result.model_path.read_bytes() == gguf_bytes
    assert check_snapshot(cache, result.resolution, deep=True).complete
    # the standard cache layout: huggingface_hub's own readers find the file and the ref
    cached = try_to_load_from_cache("org/tiny-GGUF", "tiny-q4_k_m.gguf", cache_dir=cache)
    assert cached == str(result.model_path)
    (repo_info,) = scan_cache_dir(cache).repos
    (revision,) = repo_info.revisions
    assert revision.commit_hash == gguf_repo and revision.refs == frozenset({"main"})


def test_globs_select_only_matching_files(
    cache: Path, settings: HubSettings, hub: MirrorServer, gguf_repo: str
) -> None:
    result = fetch(cache, "org/tiny-GGUF", "main", ["*.json", "*q8_0*"], settings)

    assert [f.path for f in result.resolution.files] == ["config.json", "tiny-q8_0.gguf"]
    snapshot = {p.name for p in result.snapshot_dir.iterdir()}
    assert snapshot == {"config.json", "tiny-q8_0.gguf"}
    assert not gets(hub, "q4_k_m") and not gets(hub, "README")
    assert result.model_path.name == "tiny-q8_0.gguf"


def test_whole_repo_when_no_globs(
    cache: Path, settings: HubSettings, hub: MirrorServer, gguf_repo: str
) -> None:
    result = fetch(cache, "org/tiny-GGUF", "main", None, settings)

    assert len(result.downloaded) == 5
    assert result.model_path == result.snapshot_dir  # a whole-repo source is its directory
    # interop: huggingface_hub's own offline lookup sees a complete snapshot
    path = snapshot_download("org/tiny-GGUF", cache_dir=cache, local_files_only=True)
    assert Path(path) == result.snapshot_dir


def test_mmproj_is_never_the_main_file(
    cache: Path, settings: HubSettings, hub: MirrorServer, gguf_repo: str
) -> None:
    result = fetch(cache, "org/tiny-GGUF", "main", ["mmproj*", "*q4_k_m*"], settings)
    assert result.model_path.name == "tiny-q4_k_m.gguf"


def test_globs_matching_nothing_name_what_is_there(
    cache: Path, settings: HubSettings, hub: MirrorServer, gguf_repo: str
) -> None:
    with pytest.raises(NoMatchingFiles, match=r"matches \*q2_k\*.*tiny-q4_k_m.gguf"):
        fetch(cache, "org/tiny-GGUF", "main", ["*q2_k*"], settings)
    assert not cache.exists()


def test_second_pass_downloads_nothing(
    cache: Path, settings: HubSettings, hub: MirrorServer, gguf_repo: str
) -> None:
    resolution = resolve(cache, "org/tiny-GGUF", "main", ["*q4_k_m*"], settings)
    ensure_downloaded(cache, resolution, settings)
    hub.requests.clear()

    again = ensure_downloaded(cache, resolution, settings)

    assert again.downloaded == () and again.refetched == ()
    assert hub.requests == []


def test_progress_reports_bytes_up_to_the_total(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    repos.commit(
        "org/shards",
        {f"model-0000{i}-of-00003.safetensors": safetensors_bytes(200_000, i) for i in (1, 2, 3)},
    )
    seen: list[Progress] = []
    resolution = resolve(cache, "org/shards", "main", None, settings)

    ensure_downloaded(cache, resolution, settings, progress=seen.append, poll_interval=0.01)

    assert seen[0].done == 0 and seen[0].total == resolution.total_size
    assert seen[-1] == Progress(resolution.total_size, resolution.total_size, 3, 3)
    dones = [p.done for p in seen]
    assert dones == sorted(dones)


def test_hub_refusing_mid_way_is_a_hub_error_not_bad_data(
    cache: Path, settings: HubSettings, hub: MirrorServer, gguf_repo: str
) -> None:
    resolution = resolve(cache, "org/tiny-GGUF", "main", None, settings)
    hub.token = "rotated"  # the hub starts refusing us after the resolution

    with pytest.raises(HubError, match=r"refused access to org/tiny-GGUF@main \(401\)"):
        ensure_downloaded(cache, resolution, settings)
    assert not check_snapshot(cache, resolution, deep=True).corrupt


def test_a_partial_snapshot_from_a_failing_hub_is_not_taken_for_complete(
    cache: Path, settings: HubSettings, hub: MirrorServer, gguf_repo: str
) -> None:
    # another tool cached one file (no tree listing): huggingface_hub then returns the partial
    # snapshot instead of raising when the hub refuses the listing
    hf_hub_download(
        "org/tiny-GGUF",
        "config.json",
        revision=gguf_repo,
        cache_dir=cache,
        endpoint=hub.url,
        token=False,
    )
    resolution = resolve(cache, "org/tiny-GGUF", "main", None, settings)
    hub.token = "rotated"

    with pytest.raises(HubUnreachable, match=r"did not deliver README\.md, mmproj") as err:
        ensure_downloaded(cache, resolution, settings)
    assert err.value.retryable
