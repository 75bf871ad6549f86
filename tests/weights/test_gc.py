"""gc lists what no manifest uses, deletes only when asked, and never what is in use."""

from __future__ import annotations

from pathlib import Path

from reconciler.weights import HubSettings, MirrorServer, check_snapshot, collect, fetch, plan_gc
from reconciler.weights.layout import snapshot_dir

from .hubgen import HubRepos, config_bytes, safetensors_bytes


def _v(n: int) -> dict[str, bytes]:
    return {"config.json": config_bytes(v=n), "model.safetensors": safetensors_bytes(3000, n)}


def test_lists_and_deletes_only_unreferenced_revisions(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    old = repos.commit("org/m", _v(1))
    fetch(cache, "org/m", "main", None, settings)
    new = repos.commit("org/m", _v(2))
    current = fetch(cache, "org/m", "main", None, settings)
    other = repos.commit("org/other", _v(3))
    kept = fetch(cache, "org/other", other, None, settings)
    gone = repos.commit("org/gone", _v(4))
    fetch(cache, "org/gone", "main", None, settings)
    in_use = [("org/m", "main"), ("org/other", other)]

    plan = plan_gc(cache, in_use)

    assert [(c.repo, c.commit) for c in plan.candidates] == [("org/gone", gone), ("org/m", old)]
    assert all(c.size > 0 for c in plan.candidates)
    assert set(plan.kept) == {("org/m", new), ("org/other", other)}
    assert plan.reclaimable == sum(c.size for c in plan.candidates)
    assert snapshot_dir(cache, "org/m", old).is_dir()  # listing deletes nothing

    collect(cache, in_use, delete=True)

    assert not snapshot_dir(cache, "org/m", old).exists()
    assert not (cache / "models--org--gone").exists()
    assert check_snapshot(cache, current.resolution, deep=True).complete
    assert check_snapshot(cache, kept.resolution, deep=True).complete
    assert plan_gc(cache, in_use).candidates == ()


def test_a_fork_with_the_same_commit_is_deleted_alone(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    sha = "ab" * 20
    repos.commit("org/m", _v(1), sha=sha)
    repos.commit("fork/m", _v(1), sha=sha)
    used = fetch(cache, "org/m", "main", None, settings)
    fetch(cache, "fork/m", "main", None, settings)

    plan = collect(cache, [("org/m", sha)], delete=True)

    assert [(c.repo, c.commit) for c in plan.candidates] == [("fork/m", sha)]
    assert not (cache / "models--fork--m").exists()
    assert check_snapshot(cache, used.resolution, deep=True).complete


def test_hard_linked_blobs_count_once_and_only_when_every_link_goes(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos, gguf_bytes: bytes
) -> None:
    for repo in ("org/a", "org/b", "org/c"):
        repos.commit(repo, {"m.gguf": gguf_bytes})
        fetch(cache, repo, "main", None, settings)  # a, b and c share one inode
    size = len(gguf_bytes)

    assert plan_gc(cache, []).reclaimable == size  # all three go: the blob is freed once
    assert plan_gc(cache, [("org/a", "main")]).reclaimable == 0  # a keeps the blob alive


def test_no_cache_yet_means_nothing_to_collect(tmp_path: Path) -> None:
    plan = collect(tmp_path / "never-created", [], delete=True)
    assert plan.candidates == () and plan.reclaimable == 0
