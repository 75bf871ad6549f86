"""Probes, metrics, events, the request log and JSON logs of a real ``modelplane run``.

One service for the module, logging with ``--log-format json``. (GPUs in /api/status and
/metrics are tested with the GPU integration, tests/gpu_integration.)
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.manifests import fake_engine_doc, model_doc
from tests.service.conftest import Box, module_box, node_doc, wait_until


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    docs = {
        "node.yaml": node_doc(proxy={"accessLog": True}),
        "engine.yaml": fake_engine_doc("fake", "--token-delay", "0.01"),
        "models.yaml": "---\n".join(
            [
                model_doc("m", stayWarm="10m"),
                model_doc("other", stayWarm="10m"),
            ]
        ),
    }
    yield from module_box(tmp_path_factory, docs, "--log-format", "json")


@pytest.fixture(scope="module")
def traffic(box: Box) -> list[tuple[str, int]]:
    """Requests made before the tests look: (path, status) of each, in order."""
    client = box.client()
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a b c"}])
    for _ in client.chat.completions.create(
        model="m",
        messages=[{"role": "user", "content": "x"}],
        stream=True,
        stream_options={"include_usage": True},
    ):
        pass
    client.embeddings.create(model="m", input="hello")
    with box.http() as http:
        missing = http.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    return [
        ("/v1/chat/completions", 200),
        ("/v1/chat/completions", 200),
        ("/v1/embeddings", 200),
        ("/v1/completions", missing.status_code),
    ]


def samples(box: Box) -> dict[str, list[tuple[dict[str, str], float]]]:
    with box.http() as http:
        text = http.get("/metrics").text
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    matching = [v for ls, v in found.get(name, []) if labels.items() <= ls.items()]
    assert matching, f"no {name}{labels} in {sorted(found)}"
    return sum(matching)


def test_probes(box: Box) -> None:
    with box.http() as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "reason": "ok"}


def test_metrics_after_traffic(box: Box, traffic: list[tuple[str, int]]) -> None:
    found = samples(box)
    assert value(found, "modelplane_requests_total", model="m", status="200") == 3
    assert value(found, "modelplane_requests_total", status="404") == 1
    assert value(found, "modelplane_request_duration_seconds_count", model="m") == 3
    assert value(found, "modelplane_time_to_first_token_seconds_count", model="m") == 1
    assert value(found, "modelplane_tokens_total", model="m", kind="completion") == 16
    assert value(found, "modelplane_tokens_total", model="m", kind="prompt") >= 3
    assert value(found, "modelplane_queue_depth", model="m") == 0
    assert value(found, "modelplane_in_flight", model="m") == 0
    assert value(found, "modelplane_cold_starts_total", model="m") == 1
    assert value(found, "modelplane_cold_start_duration_seconds_count", model="m") == 1
    assert value(found, "modelplane_model_phase", model="m", phase="Ready") == 1
    assert value(found, "modelplane_model_phase", model="other", phase="Asleep") == 1
    assert value(found, "modelplane_model_phase", model="other", phase="Ready") == 0


def test_status_shows_models(box: Box, traffic: list[tuple[str, int]]) -> None:
    status = box.svc.status()
    m = next(e for e in status["models"] if e["name"] == "m")
    assert m["phase"] == "Ready" and m["endpoint"].startswith("http://127.0.0.1:")
    assert m["inFlight"] == 0 and m["queued"] == 0 and m["idleFor"] >= 0


def test_a_request_log_row_per_request(box: Box, traffic: list[tuple[str, int]]) -> None:
    db = box.state_dir / "modelplane.db"

    def rows() -> list[tuple[Any, ...]]:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return conn.execute(
                "SELECT path, status, model, client, latency, prompt_tokens, completion_tokens,"
                " time FROM requests ORDER BY id"
            ).fetchall()

    found = wait_until(lambda: len(rows()) >= len(traffic) and rows(), what="rows written")
    assert [(r[0], r[1]) for r in found] == traffic
    assert [r[2] for r in found] == ["m", "m", "m", "nope"]
    assert all(r[3] == "127.0.0.1" and r[4] > 0 and r[7] > time.time() - 600 for r in found)
    assert [r[6] for r in found] == [8, 8, None, None]  # the embedding has no completion
    assert found[2][5] == 1  # "hello": one prompt token


def test_events_and_following_them(box: Box) -> None:
    history = box.svc.events()
    assert history[0]["kind"] == "Applied" and history[0]["message"].startswith("generation 1")
    received: list[dict[str, Any]] = []
    connected = threading.Event()

    def follow() -> None:
        with (
            box.http(timeout=30) as http,
            http.stream("GET", "/api/events", params={"follow": "1", "limit": "0"}) as reply,
        ):
            assert reply.headers["content-type"].startswith("text/event-stream")
            connected.set()
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    received.append(json.loads(line[6:]))
                    if received[-1]["kind"] == "Started":
                        return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert connected.wait(10)
    time.sleep(0.2)  # the server side subscribes right after sending the headers
    status, body = box.svc.request("POST", "/api/models/other/load")
    assert status == 200, body
    follower.join(20)
    assert [(e["model"], e["kind"]) for e in received] == [
        ("other", "Override"),  # a load by hand holds the model (reconciler/overrides.py)
        ("other", "Starting"),
        ("other", "Started"),
    ]


def test_logs_are_json_lines(box: Box, traffic: list[tuple[str, int]]) -> None:
    lines = [line for line in box.svc.log_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line (stderr and stdout) is JSON
    access = [(r["path"], r["status"]) for r in records if r["logger"] == "modelplane.access"]
    assert access[: len(traffic)] == traffic
    assert not any("color_message" in r for r in records)  # uvicorn's ANSI-coloured copy
