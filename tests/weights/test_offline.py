"""HF_HUB_OFFLINE: the cache answers alone, never the network; an unreachable hub falls back."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.weights import (
    HubSettings,
    HubUnreachable,
    MirrorServer,
    NotCachedError,
    fetch,
    resolve,
)

from .hubgen import HubRepos, config_bytes, safetensors_bytes

FILES = {
    "config.json": config_bytes(),
    "model.safetensors": safetensors_bytes(2000),
    "tokenizer.json": b'{"version": "1.0"}',
}


@pytest.fixture
def repo(repos: HubRepos) -> str:
    return repos.commit("org/m", FILES)


def _offline(hub: MirrorServer, monkeypatch: pytest.MonkeyPatch) -> HubSettings:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = HubSettings.from_env()
    assert settings.offline and settings.endpoint == hub.url
    return settings


def test_offline_with_the_files_cached_uses_them_without_any_request(
    cache: Path,
    settings: HubSettings,
    hub: MirrorServer,
    repo: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    online = fetch(cache, "org/m", "main", None, settings)
    hub.requests.clear()

    offline = fetch(cache, "org/m", "main", None, _offline(hub, monkeypatch))

    assert offline.resolution.source == "cache"
    assert offline.resolution.commit == repo
    assert offline.model_path == online.model_path and offline.downloaded == ()
    assert [f.path for f in offline.resolution.files] == sorted(FILES)
    assert hub.requests == []


def test_offline_without_the_files_is_a_clear_final_error(
    cache: Path, hub: MirrorServer, repo: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(NotCachedError, match="org/m@main is not in the cache") as err:
        fetch(cache, "org/m", "main", None, _offline(hub, monkeypatch))
    assert err.value.retryable is False
    assert hub.requests == []


def test_offline_names_the_selected_files_never_downloaded(
    cache: Path,
    settings: HubSettings,
    hub: MirrorServer,
    repo: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fetch(cache, "org/m", "main", ["*.json"], settings)  # the safetensors never came
    hub.requests.clear()

    with pytest.raises(NotCachedError, match=r"1 file\(s\) .* not in the cache: model.safetensors"):
        fetch(cache, "org/m", "main", None, _offline(hub, monkeypatch))
    assert hub.requests == []


def test_unreachable_hub_falls_back_to_the_cache(
    cache: Path, settings: HubSettings, hub: MirrorServer, repo: str
) -> None:
    fetch(cache, "org/m", "main", None, settings)
    hub.stop()

    resolution = resolve(cache, "org/m", "main", None, settings)

    assert resolution.source == "cache" and resolution.commit == repo
    with pytest.raises(HubUnreachable, match=r"cannot reach .* org/other@main"):
        resolve(cache, "org/other", "main", None, settings)
