"""HF_HUB_OFFLINE=1: the cache alone answers; a missing file is a clear, final ``Failed``."""

from __future__ import annotations

import time

import httpx

from reconciler.weights import MirrorServer
from tests.weights.hubgen import HubRepos

from .conftest import Box, backend_stats, hub_model

OFFLINE = {"HF_HUB_OFFLINE": "1"}


def _chat(base_url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return httpx.post(f"{base_url}/chat/completions", json=body, timeout=60)


def test_offline_without_the_files_fails_once_with_the_reason_and_asks_nobody(
    box: Box, hub: MirrorServer, repos: HubRepos
) -> None:
    repos.commit("org/tiny", {"tiny.gguf": b"weights" * 100})
    box.write(hub_model("m", "org/tiny", pin=True), hub_model("lazy", "org/tiny"), resync="1s")

    with box.service(env=OFFLINE) as svc:
        failed = svc.wait_phase("m", "Failed")
        assert "offline (HF_HUB_OFFLINE)" in failed["reason"]
        assert "org/tiny@main is not in the cache" in failed["reason"]
        time.sleep(2.5)  # two resyncs: each looks at the cache again, and says nothing new
        events = [e for e in svc.events("m") if e["kind"] == "Failed"]
        assert len(events) == 1 and "offline (HF_HUB_OFFLINE)" in events[0]["message"]
        reply = _chat(svc.base_url, "lazy")  # a wake fails at once, with the reason
        assert reply.status_code == 503, reply.text
        assert "offline (HF_HUB_OFFLINE)" in reply.json()["error"]["message"]
        assert box.status()["m"]["phase"] == "Failed"
    assert hub.requests == []


def test_offline_with_the_files_cached_verifies_and_starts_without_the_hub(
    box: Box, hub: MirrorServer, repos: HubRepos, gguf_bytes: bytes
) -> None:
    commit = repos.commit("org/tiny", {"tiny.gguf": gguf_bytes, "notes.txt": b"x"})
    box.write(hub_model("m", "org/tiny", ["*.gguf"]))
    assert box.cli("apply", box.manifests.root).code == 0  # prefetch: downloaded, not started
    hub.requests.clear()
    box.state = box.root / "fresh-state"  # a database that never saw these files verified
    box.write(hub_model("m", "org/tiny", ["*.gguf"], pin=True))

    with box.service(env=OFFLINE) as svc:
        ready = svc.wait_phase("m", "Ready")
        assert ready["revision"] == commit
        assert backend_stats(ready["endpoint"])["model_path"].endswith(f"{commit}/tiny.gguf")
        assert any(
            e["kind"] == "Downloaded" and "verified" in e["message"] for e in svc.events("m")
        )
    assert hub.requests == []


def test_offline_with_a_selected_file_missing_fails_for_good(
    box: Box, hub: MirrorServer, repos: HubRepos
) -> None:
    repos.commit("org/tiny", {"a.gguf": b"a" * 3000, "b.gguf": b"b" * 3000})
    box.write(hub_model("m", "org/tiny", ["a.gguf"]))
    assert box.cli("apply", box.manifests.root).code == 0  # a.gguf only
    hub.requests.clear()
    box.write(hub_model("m", "org/tiny", ["*.gguf"], pin=True), resync="1s")

    with box.service(env=OFFLINE) as svc:
        failed = svc.wait_phase("m", "Failed")
        assert "not in the cache: b.gguf" in failed["reason"]
        time.sleep(2.5)
        tries = [
            e for e in svc.events("m") if e["kind"] == "Downloading" and "pinned" in e["message"]
        ]
        assert len(tries) == 1  # a permanent failure: no retry until the spec changes
        assert svc.model("m")["phase"] == "Failed"
    assert hub.requests == []
