"""``modelplane run`` with hub sources: downloads in the background, a wake that waits for one,
and a branch that moves upstream picked up on resync."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx

from reconciler.weights import MirrorServer
from reconciler.weights.layout import snapshot_dir
from reconciler.weights.mirror import HoldBody
from tests.helpers.manifests import model_doc
from tests.helpers.service import ServiceProcess
from tests.weights.hubgen import HubRepos

from .conftest import Box, backend_stats, file_gets, hub_model


def wait_until(what: str, predicate: Any, svc: ServiceProcess, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{svc.log_text()[-3000:]}")


def test_a_download_runs_in_the_background_and_a_wake_waits_for_it(
    box: Box, hub: MirrorServer, repos: HubRepos, gguf_bytes: bytes
) -> None:
    commit = repos.commit("org/tiny", {"tiny-q4_k_m.gguf": gguf_bytes})
    hold = HoldBody("tiny-q4_k_m.gguf", after_bytes=1000)
    hub.holds.append(hold)
    box.write(hub_model("lazy", "org/tiny", ["*.gguf"]), model_doc("local", "fake", pin=True))

    with box.service() as svc:
        entry = svc.wait_phase("lazy", "Downloading")  # prefetch (the default): not pinned
        assert entry["download"]["total"] == len(gguf_bytes)
        assert "prefetch" in entry["reason"] and f"org/tiny@{commit[:12]}" in entry["reason"]
        cli = box.status()["lazy"]
        assert (cli["phase"], cli["download"]["total"]) == ("Downloading", len(gguf_bytes))

        # another model is served while the download is under way
        svc.wait_phase("local", "Ready")
        other = httpx.post(
            f"{svc.base_url}/chat/completions",
            json={"model": "local", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert other.status_code == 200, other.text

        # a streamed request for the downloading model waits, with loading comments
        lines: list[str] = []

        def stream() -> None:
            with httpx.stream(
                "POST",
                f"{svc.base_url}/chat/completions",
                json={
                    "model": "lazy",
                    "stream": True,
                    "messages": [{"role": "user", "content": "x"}],
                },
                timeout=60,
            ) as reply:
                lines.extend(reply.iter_lines())

        client = threading.Thread(target=stream)
        client.start()
        wait_until("a loading comment", lambda: any(x.startswith(": loading") for x in lines), svc)
        assert svc.model("lazy")["phase"] == "Downloading"
        assert not any(x.startswith("data: {") for x in lines)

        hold.release.set()
        client.join(60)
        data = [x for x in lines if x.startswith("data: ")]
        assert len(data) > 1 and data[-1] == "data: [DONE]"
        ready = svc.wait_phase("lazy", "Ready")
        expected = snapshot_dir(box.hub_cache, "org/tiny", commit) / "tiny-q4_k_m.gguf"
        assert Path(backend_stats(ready["endpoint"])["model_path"]) == expected
        assert ready["revision"] == commit and ready["download"] is None
        kinds = [e["kind"] for e in svc.events("lazy")]
        assert kinds.index("Downloading") < kinds.index("Downloaded") < kinds.index("Started")
        assert len(file_gets(hub)) == 1


def test_max_downloads_bounds_the_downloads_at_once(
    box: Box, hub: MirrorServer, repos: HubRepos
) -> None:
    for name in ("a", "b"):
        repos.commit(f"org/{name}", {f"{name}.gguf": name.encode() * 5000})
    holds = [HoldBody(f"{name}.gguf", after_bytes=100) for name in ("a", "b")]
    hub.holds.extend(holds)
    box.write(hub_model("a", "org/a"), hub_model("b", "org/b"), maxDownloads=1)

    with box.service() as svc:
        svc.wait_phase("a", "Downloading")
        svc.wait_phase("b", "Downloading")
        wait_until("one body requested", lambda: any(h.reached.is_set() for h in holds), svc)
        time.sleep(0.5)  # a second download would have asked for its file by now
        assert [h.reached.is_set() for h in holds].count(True) == 1
        waiting = "b" if holds[0].reached.is_set() else "a"
        entry = svc.model(waiting)
        assert entry["phase"] == "Downloading" and entry["download"]["done"] == 0
        for hold in holds:
            hold.release.set()
        svc.wait_phase("a", "Asleep")
        svc.wait_phase("b", "Asleep")
        assert len(file_gets(hub)) == 2


def test_a_branch_that_moves_upstream_is_downloaded_then_recreated_on_resync(
    box: Box, hub: MirrorServer, repos: HubRepos, gguf_bytes: bytes
) -> None:
    first = repos.commit("org/tiny", {"tiny.gguf": gguf_bytes})
    box.write(hub_model("m", "org/tiny", ["*.gguf"], pin=True), resync="1s")

    with box.service() as svc:
        before = svc.wait_phase("m", "Ready")
        assert before["revision"] == first
        old_pid = backend_stats(before["endpoint"])["pid"]

        second = repos.commit("org/tiny", {"tiny.gguf": gguf_bytes + b"\0" * 32})

        after = wait_until(
            "the new revision running",
            lambda: (m := svc.model("m"))["phase"] == "Ready" and m["revision"] == second and m,
            svc,
        )
        stats = backend_stats(after["endpoint"])
        assert stats["pid"] != old_pid
        new_file = snapshot_dir(box.hub_cache, "org/tiny", second) / "tiny.gguf"
        assert (
            Path(stats["model_path"]) == new_file
            and new_file.stat().st_size == len(gguf_bytes) + 32
        )
        messages = [(e["kind"], e["message"]) for e in svc.events("m")]
        moved = f"org/tiny@main is commit {second[:12]} (was {first[:12]})"
        assert ("Resolved", moved) in messages
        kinds = [k for k, _ in messages]
        last_download = len(kinds) - 1 - kinds[::-1].index("Downloaded")
        assert any(k == "Starting" and "recreate m" in msg for k, msg in messages[last_download:])


def test_stopping_the_service_mid_download_does_not_wait_for_the_hub(
    box: Box, hub: MirrorServer, repos: HubRepos
) -> None:
    repos.commit("org/big", {"big.gguf": b"b" * 100_000})
    hold = HoldBody("big.gguf", after_bytes=100)  # released only after the service has gone
    hub.holds.append(hold)
    box.write(hub_model("m", "org/big"))

    with box.service() as svc:
        svc.wait_phase("m", "Downloading")
        assert hold.reached.wait(30)
        code = svc.stop()  # SIGTERM; the helper kills after 30 s, which would read -9

    assert code == 0, svc.log_text()[-3000:]
    assert "still stalled on the hub" in svc.log_text()
