"""A cached file that no longer matches its hash is deleted and fetched again before a start,
and the event log says so; files unchanged since their last hash are not read again."""

from __future__ import annotations

import hashlib

import httpx

from reconciler.weights import MirrorServer
from reconciler.weights.layout import pointer_path
from tests.weights.hubgen import HubRepos

from .conftest import Box, file_gets, hub_model


def test_a_truncated_file_is_fetched_again_by_apply(
    box: Box, hub: MirrorServer, repos: HubRepos, gguf_bytes: bytes
) -> None:
    commit = repos.commit("org/tiny", {"tiny.gguf": gguf_bytes})
    box.write(hub_model("m", "org/tiny"))  # not pinned: apply only prefetches
    assert box.cli("apply", box.manifests.root).code == 0
    blob = pointer_path(box.hub_cache, "org/tiny", commit, "tiny.gguf").resolve()
    blob.write_bytes(gguf_bytes[: len(gguf_bytes) // 2])

    plan = box.cli("plan", box.manifests.root)
    assert plan.code == 2 and "prefetch; fetch 1 file" in plan.stdout, plan.output
    done = box.cli("apply", box.manifests.root)

    assert done.code == 0, done.output
    assert blob.read_bytes() == gguf_bytes
    assert len(file_gets(hub, "tiny.gguf")) == 2
    events = box.events("m")
    assert (
        f"tiny.gguf of org/tiny@{commit[:12]} was corrupt (size {len(gguf_bytes) // 2} bytes,"
        f" expected {len(gguf_bytes)} (truncated or corrupt)): deleted and downloaded again"
    ) in events
    assert box.cli("plan", box.manifests.root).code == 0


def test_a_corrupted_blob_is_detected_before_a_wake_starts_the_model(
    box: Box, hub: MirrorServer, repos: HubRepos, gguf_bytes: bytes
) -> None:
    commit = repos.commit("org/tiny", {"tiny.gguf": gguf_bytes})
    box.write(hub_model("m", "org/tiny"))
    with box.service() as svc:
        svc.wait_phase("m", "Asleep")  # prefetched and verified
        blob = pointer_path(box.hub_cache, "org/tiny", commit, "tiny.gguf").resolve()
        assert blob.read_bytes() == gguf_bytes
        flipped = bytearray(gguf_bytes)
        flipped[-1] ^= 0xFF  # same size: only a hash can tell
        blob.write_bytes(bytes(flipped))

        reply = httpx.post(
            f"{svc.base_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )

        assert reply.status_code == 200, reply.text
        assert (
            hashlib.sha256(blob.read_bytes()).hexdigest() == hashlib.sha256(gguf_bytes).hexdigest()
        )
        refetched = [e["message"] for e in svc.events("m") if e["kind"] == "Refetched"]
        assert len(refetched) == 1
        assert refetched[0].startswith(f"tiny.gguf of org/tiny@{commit[:12]} was corrupt (sha256 ")
        assert refetched[0].endswith("deleted and downloaded again")
        assert len(file_gets(hub, "tiny.gguf")) == 2
