"""A download stops at its next chunk once cancelled (shutdown), leaving no partial file."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from reconciler.weights import HubSettings, MirrorServer, ensure_downloaded, resolve
from reconciler.weights.errors import DownloadCancelled
from reconciler.weights.mirror import HoldBody

from .hubgen import HubRepos


def test_a_cancelled_download_raises_and_cleans_up(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    repos.commit("org/m", {"m.safetensors": b"w" * 200_000})
    resolution = resolve(cache, "org/m", "main", None, settings)
    hold = HoldBody("m.safetensors", after_bytes=1000)
    hub.holds.append(hold)
    cancel = threading.Event()
    failure: list[BaseException] = []

    def download() -> None:
        try:
            ensure_downloaded(cache, resolution, settings, cancel=cancel, measure=lambda _: 2**40)
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=download)
    worker.start()
    assert hold.reached.wait(30)
    cancel.set()
    hold.release.set()
    worker.join(30)

    assert not worker.is_alive()
    assert len(failure) == 1 and isinstance(failure[0], DownloadCancelled)
    assert list(cache.rglob("*.incomplete")) == []
    assert not list(cache.glob("models--org--m/snapshots/*/m.safetensors"))


def test_an_uncancelled_download_is_not_affected(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos
) -> None:
    repos.commit("org/m", {"m.safetensors": b"w" * 2000})
    resolution = resolve(cache, "org/m", "main", None, settings)
    result = ensure_downloaded(cache, resolution, settings, cancel=threading.Event())
    assert result.downloaded == ("m.safetensors",)
    with pytest.raises(DownloadCancelled):
        stopped = threading.Event()
        stopped.set()
        repos.commit("org/m", {"m.safetensors": b"v" * 2000})
        ensure_downloaded(
            cache, resolve(cache, "org/m", "main", None, settings), settings, cancel=stopped
        )
