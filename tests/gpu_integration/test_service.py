"""Placement, eviction and Unschedulable through the real ``modelplane run`` (docs/architecture.md).

Two static 10 GiB GPUs; each fake backend declares its ``vram``. Models wake on requests, so the
order of the requests decides the placements, which the tests then read back three ways: the
backend's own ``CUDA_VISIBLE_DEVICES``, ``/api/status`` and ``/metrics``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from reconciler.units import GiB
from tests.helpers.manifests import ManifestDir, fake_engine_doc, model_doc
from tests.helpers.service import ServiceProcess, start_service

from .conftest import backend_stats, node_doc


def chat(svc: ServiceProcess, model: str, timeout: float = 60.0) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    return httpx.post(f"{svc.base_url}/chat/completions", json=body, timeout=timeout)


def stats_of(svc: ServiceProcess, model: str) -> dict[str, Any]:
    entry = svc.model(model)
    assert entry["phase"] == "Ready", entry
    return backend_stats(entry["endpoint"])


def events_of(svc: ServiceProcess, kind: str) -> list[dict[str, Any]]:
    return [e for e in svc.events() if e["kind"] == kind]


def gauge(svc: ServiceProcess, name: str) -> dict[str, float]:
    """``{gpu index: value}`` of one modelplane_gpu_* gauge in /metrics."""
    text = httpx.get(f"{svc.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return {s.labels["gpu"]: s.value for s in family.samples}
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def test_best_fit_lru_eviction_and_unschedulable(manifests: ManifestDir, state_dir: Path) -> None:
    """p (pinned) and h (high) fill GPU 0, l1 and l2 (low) GPU 1; waking n evicts l2, the
    least recently used low-priority model, although evicting p or h would have made room
    too, and only l2 although l1 could go as well while l2 takes its time to stop; x (batch)
    finds nothing it may evict and gets a 503 after queueTimeout."""
    manifests.write("node.yaml", node_doc(queue_timeout="2s"))
    manifests.write("engine.yaml", fake_engine_doc("fake", "--echo-env", "CUDA_DEVICE_ORDER"))
    warm = {"stayWarm": "1h"}
    manifests.write(
        "models.yaml",
        model_doc("p", vram="6GiB", pin=True),
        model_doc("h", vram="4GiB", priority="high", **warm),
        model_doc("l1", vram="4GiB", priority="low", **warm),
        # l2 ignores SIGTERM, so its eviction takes the stop's grace (10 s, then SIGKILL):
        # passes during that time must wait for it rather than evict l1 as well.
        model_doc("l2", vram="4GiB", priority="low", args=["--ignore-sigterm"], **warm),
        model_doc("n", vram="4GiB", **warm),
        model_doc("x", vram="8GiB", priority="batch"),
    )
    with start_service(manifests.root, state_dir) as svc:
        svc.wait_phase("p", "Ready")
        for name in ("h", "l1", "l2", "l1"):  # l1 again: l2 is now the least recently used
            assert chat(svc, name).status_code == 200

        # Best fit: h fills GPU 0 exactly (p's 6 + 4); l1 and l2 go to GPU 1.
        expected = {"p": "0", "h": "0", "l1": "1", "l2": "1"}
        stats = {name: stats_of(svc, name) for name in expected}
        for name, gpus in expected.items():
            assert stats[name]["env"]["CUDA_VISIBLE_DEVICES"] == gpus, name
            assert stats[name]["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
            assert svc.model(name)["gpus"] == [int(gpus)]
        inventory = svc.status()["gpus"]
        assert inventory["source"] == "static"
        assert any("NVML is not available" in m for m in inventory["messages"])
        claims = {
            g["index"]: sorted((c["model"], c["bytes"] // GiB) for c in g["claims"])
            for g in inventory["gpus"]
        }
        assert claims == {0: [("h", 4), ("p", 6)], 1: [("l1", 4), ("l2", 4)]}
        assert gauge(svc, "modelplane_gpu_memory_claimed_bytes") == {"0": 10 * GiB, "1": 8 * GiB}
        assert gauge(svc, "modelplane_gpu_memory_total_bytes") == {"0": 10 * GiB, "1": 10 * GiB}

        # n (normal, 4 GiB) fits nowhere: l2 makes room, not pinned p nor higher-priority h.
        assert chat(svc, "n").status_code == 200
        assert stats_of(svc, "n")["env"]["CUDA_VISIBLE_DEVICES"] == "1"
        evicted = events_of(svc, "Evicted")
        assert [(e["model"], e["message"]) for e in evicted] == [
            ("l2", "evict l2 (VRAM for n, priority low)")
        ]
        assert svc.model("l2")["phase"] == "Asleep"
        for name in ("p", "h", "l1"):
            assert stats_of(svc, name)["pid"] == stats[name]["pid"], f"{name} was restarted"

        # x (batch, 8 GiB): everything running outranks it or is pinned → 503 + Retry-After.
        began = time.monotonic()
        refused = chat(svc, "x")
        assert refused.status_code == 503, refused.text
        assert time.monotonic() - began >= 2.0  # it waited queueTimeout for room
        assert int(refused.headers["retry-after"]) > 0
        message = refused.json()["error"]["message"]
        assert message.startswith("x cannot be placed: x needs 8.0 GiB"), message
        entry = svc.model("x")
        assert entry["phase"] == "Unschedulable"
        for why in (
            "h has higher priority (high)",
            "l1 has higher priority (low)",
            "n has higher priority (normal)",
            "p is pinned",
        ):
            assert why in entry["reason"], entry["reason"]
        assert [e["model"] for e in events_of(svc, "Unschedulable")] == ["x"]
        assert [e["model"] for e in events_of(svc, "Evicted")] == ["l2"]


def test_a_busy_model_is_not_evicted_the_wake_waits_for_it_to_drain(
    manifests: ManifestDir, state_dir: Path
) -> None:
    """b (pinned) holds GPU 0, a (low) GPU 1 and streams slowly. Waking c needs a's GPU: c is
    Unschedulable while a's stream runs (not cut short), then a is evicted and c starts."""
    manifests.write("node.yaml", node_doc(queue_timeout="60s"))
    manifests.write("engine.yaml", fake_engine_doc("fake"))
    manifests.write(
        "models.yaml",
        model_doc("b", vram="8GiB", pin=True),
        model_doc("a", vram="8GiB", priority="low", stayWarm="1h", args=["--token-delay", "0.2"]),
        model_doc("c", vram="8GiB", priority="low", stayWarm="1h"),
    )
    with start_service(manifests.root, state_dir) as svc:
        svc.wait_phase("b", "Ready")
        assert chat(svc, "a").status_code == 200
        a_pid = stats_of(svc, "a")["pid"]

        tokens: list[str] = []
        streaming = threading.Event()

        def stream() -> None:
            body = {
                "model": "a",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 20,
                "stream": True,
            }
            with httpx.stream(
                "POST", f"{svc.base_url}/chat/completions", json=body, timeout=60
            ) as reply:
                for line in reply.iter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        delta = json.loads(line[6:])["choices"][0]["delta"]
                        if delta.get("content"):
                            tokens.append(delta["content"])
                            streaming.set()
                    elif line == "data: [DONE]":
                        tokens.append("[DONE]")

        streamer = threading.Thread(target=stream)
        streamer.start()
        try:
            assert streaming.wait(30), "the stream did not start"
            woken: list[httpx.Response] = []
            waker = threading.Thread(target=lambda: woken.append(chat(svc, "c")))
            waker.start()
            entry = svc.wait_phase("c", "Unschedulable")
            assert "a has 1 request(s) in flight" in entry["reason"], entry["reason"]
            assert streamer.is_alive(), "the stream ended before c became Unschedulable"
            assert svc.model("a")["phase"] == "Ready"
            streamer.join(60)
            waker.join(60)
        finally:
            streamer.join(60)
        assert tokens[-1] == "[DONE]" and len(tokens) == 21, tokens  # not cut short
        assert [r.status_code for r in woken] == [200]
        assert stats_of(svc, "c")["env"]["CUDA_VISIBLE_DEVICES"] == "1"
        assert svc.model("a")["phase"] == "Asleep"
        assert stats_of(svc, "b")["env"]["CUDA_VISIBLE_DEVICES"] == "0"
        events = svc.events()
        order = [(e["kind"], e["model"]) for e in events if e["model"] in ("a", "c")]
        unschedulable = order.index(("Unschedulable", "c"))
        evicted = order.index(("Evicted", "a"))
        assert unschedulable < evicted < order.index(("Started", "c")), order
        message = next(e["message"] for e in events if e["kind"] == "Evicted")
        assert message == "evict a (VRAM for c, priority low)"
        assert a_pid != stats_of(svc, "c")["pid"]
