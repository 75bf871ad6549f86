"""The operator's commands and endpoints against a real ``modelplane run`` (issue 13):
``ps``, ``logs -f``, ``requests``, ``--version``; ``/api/requests``, ``/api/gpus``,
``/api/models/{m}/logs?follow=1``, ``/health``; ``Node.maxLoaded``; what ``run`` logs; and the
rough edges found by trying it (camelCase JSON, ``validate``'s counts, ``gpus`` on a CPU box).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.cli import run_cli
from tests.helpers.manifests import fake_engine_doc, model_doc
from tests.service.conftest import Box, MakeBox, module_box, node_doc, wait_until


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from module_box(
        tmp_path_factory,
        {
            "node.yaml": node_doc(),
            "engine.yaml": fake_engine_doc("fake"),
            "chat.yaml": model_doc("chat", pin=True),
            "coder.yaml": model_doc("coder", stayWarm="10m"),
            "embed.yaml": model_doc("embed", stayWarm="1h"),
        },
    )


def _cli(box: Box, *args: str, cwd: Path | None = None) -> Any:
    return run_cli(*args, cwd=cwd or box.state_dir.parent, state_dir=box.state_dir)


def _ask(box: Box, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    with box.http() as http:
        return http.post("/v1/chat/completions", json=body)


def test_ps_lists_loaded_models_with_until(box: Box) -> None:
    assert _ask(box, "coder").status_code == 200
    result = _cli(box, "ps")
    assert result.code == 0, result.output
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    assert result.stdout.split()[:6] == ["NAME", "PHASE", "PROCESSOR", "SIZE", "IN", "FLIGHT"]
    assert "Forever (pinned)" in lines["chat"] and "CPU" in lines["chat"]
    assert re.search(r"\b9m\d+s from now \(\d\d:\d\d:\d\d\)", lines["coder"]), lines["coder"]
    assert "embed" not in lines  # asleep: not loaded
    loaded = json.loads(_cli(box, "ps", "--json").stdout)
    assert {m["name"] for m in loaded} == {"chat", "coder"}


def test_requests_log_with_filters_cli_and_http(box: Box) -> None:
    assert _ask(box, "chat").status_code == 200
    assert _ask(box, "nope").status_code == 404
    with box.http() as http:
        rows = http.get("/api/requests").json()
        assert rows and rows[0]["time"] >= rows[-1]["time"]  # newest first
        assert set(rows[0]) >= {"client", "model", "status", "latency", "promptTokens"}
        only_chat = http.get("/api/requests", params={"model": "chat"}).json()
        assert only_chat and {r["model"] for r in only_chat} == {"chat"}
        errors = http.get("/api/requests", params={"status": 4}).json()
        assert errors and {r["status"] for r in errors} == {404}
        assert http.get("/api/requests", params={"status": "x"}).status_code == 400
    result = _cli(box, "requests", "--model", "chat")
    assert result.code == 0 and "127.0.0.1" in result.stdout and " 200 " in result.stdout
    assert "coder" not in result.stdout
    result = _cli(box, "requests", "--status", "4xx")
    assert result.code == 0 and "404" in result.stdout and " 200 " not in result.stdout
    assert _cli(box, "requests", "--client", "10.9.9.9").stdout.strip() == (
        "no requests logged that match"
    )
    bad = _cli(box, "requests", "--status", "abc")
    assert bad.code == 1 and "--status takes a code" in bad.stderr


def test_logs_follow_cli_and_sse(box: Box) -> None:
    assert _ask(box, "chat").status_code == 200
    with (
        box.http() as http,
        http.stream("GET", "/api/models/chat/logs", params={"follow": 1, "lines": 5}) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        first = [json.loads(next(lines)[6:])["line"] for _ in range(1)]
        assert first
        _ask(box, "chat")  # a new request: a new line in the backend's log, live
        seen = ""
        while "POST /v1/chat/completions" not in seen:
            line = next(lines)
            if line.startswith("data: "):
                seen = json.loads(line[6:])["line"]
    # the command: prints the tail, then follows until interrupted
    process = subprocess.Popen(
        _cli_command("logs", "chat", "-f", "-n", "2"),
        cwd=box.state_dir.parent,
        env=_cli_env(box),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        time.sleep(1.0)
        _ask(box, "chat")
        deadline = time.monotonic() + 20
        text = ""
        while "POST /v1/chat/completions" not in text and time.monotonic() < deadline:
            text += process.stdout.readline()
        assert "POST /v1/chat/completions" in text, text
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(10) == 0


def _cli_command(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "reconciler.cli", *args]


def _cli_env(box: Box) -> dict[str, str]:
    from tests.helpers.service import service_env

    return service_env(box.state_dir)


def test_health_gpus_version(box: Box) -> None:
    with box.http() as http:
        assert http.get("/health").json() == {"status": "ok"}
        gpus = http.get("/api/gpus").json()
        assert gpus["gpus"] == [] and "gpus is none" in "; ".join(gpus["messages"])
    version = _cli(box, "--version")
    assert version.code == 0 and re.fullmatch(r"modelplane \S+\n", version.stdout)
    empty = _cli(box, "gpus")
    assert empty.code == 0 and empty.stdout.startswith("no GPUs: "), empty.stdout
    assert "┏" not in empty.stdout  # no empty table


def test_json_is_camel_case(box: Box, tmp_path: Path) -> None:
    """/api/status, /api/requests, /api/events and plan --json spell keys as the manifests do."""
    _ask(box, "chat")
    with box.http() as http:
        documents = {
            "/api/status": http.get("/api/status").json(),
            "/api/requests": http.get("/api/requests").json(),
            "/api/events": http.get("/api/events").json(),
        }
    plan = run_cli("plan", box.manifests.root, "--json", cwd=tmp_path, state_dir=box.state_dir)
    documents["plan --json"] = plan.json()
    for where, document in documents.items():
        snake = sorted(_snake_keys(document))
        assert not snake, f"{where}: snake_case keys {snake}"


def _snake_keys(value: Any, data_keys: bool = False) -> set[str]:
    """Keys with an underscore; the keys of maps keyed by data (model names, URLs) are skipped."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if not data_keys and "_" in key:
                found.add(key)
            found |= _snake_keys(item, data_keys=key in DATA_MAPS)
    elif isinstance(value, list):
        for item in value:
            found |= _snake_keys(item)
    return found


DATA_MAPS = {"models", "placements", "waiting", "unschedulable", "notifications", "unavailable"}


def test_max_loaded_evicts_the_least_recently_used(make_box: MakeBox) -> None:
    """A CPU-only box with Node.maxLoaded 2: a third model evicts the idle one used least
    recently (the pinned one stays), with the cause in the events."""
    box = make_box(
        {
            "node.yaml": node_doc(maxLoaded=2),
            "engine.yaml": fake_engine_doc("fake"),
            "a.yaml": model_doc("a", pin=True),
            "b.yaml": model_doc("b", stayWarm="1h"),
            "c.yaml": model_doc("c", stayWarm="1h"),
        }
    )
    svc = box.start()
    svc.wait_phase("a", "Ready")
    assert _ask(box, "b").status_code == 200
    assert _ask(box, "c").status_code == 200
    assert svc.model("c")["phase"] == "Ready"
    wait_until(lambda: svc.model("b")["phase"] == "Asleep", what="b evicted")
    assert svc.model("a")["phase"] == "Ready"
    evicted = box.events("b", ("Evicted",))
    assert evicted and "maxLoaded 2 for c" in evicted[-1]["message"], evicted


def test_run_logs_actions_and_what_it_leaves_running(make_box: MakeBox) -> None:
    box = make_box(
        {
            "node.yaml": node_doc(),
            "engine.yaml": fake_engine_doc("fake"),
            "m.yaml": model_doc("m", pin=True),
        }
    )
    svc = box.start()
    svc.wait_phase("m", "Ready")
    wait_until(lambda: re.search(r"Started m: m ready on \S+ in [\d.]+s", svc.log_text()))
    assert _ask(box, "m").status_code == 200
    assert svc.stop(signal.SIGINT) == 0
    log = svc.log_text()
    assert "1 backend(s) left running for adoption (m); `modelplane down` stops them" in log, log
    assert "Traceback" not in log
    # No service now: the commands read the database and the runtimes.
    requests = _cli(box, "requests", "--dir", str(box.manifests.root))
    assert requests.code == 0 and " m " in requests.stdout and " 200 " in requests.stdout
    ps = _cli(box, "ps", "--dir", str(box.manifests.root))
    assert ps.code == 0 and "Forever (pinned)" in ps.stdout, ps.output


def test_validate_counts_and_doctor_engines(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "node.yaml").write_text(node_doc(listen="127.0.0.1:1"))
    (manifests / "m.yaml").write_text(model_doc("m", engine="llama-server"))
    (manifests / "e.yaml").write_text(fake_engine_doc("fake"))
    valid = run_cli("validate", manifests, cwd=tmp_path)
    assert valid.code == 0 and "(1 model, 1 engine, node set)" in valid.stdout, valid.output
    path = "/usr/bin:/bin"  # no llama-server there
    doctor = run_cli("doctor", manifests, cwd=tmp_path, env={"PATH": path})
    text = doctor.stdout
    assert doctor.code == 1, text
    assert "llama-server: llama-server not found" in text and "ggml-org/llama.cpp" in text
    assert "Node.gpus is none: no GPU is used" in text  # NVML not even asked
    assert "no model comes from the hub: not asked" in text
    assert "1 failed" in text


def test_spec_vram_is_used_when_the_gguf_header_cannot_be_read(tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"not a gguf header at all" * 100)
    gpus = [{"index": 0, "memory": "24GiB"}]
    (manifests / "node.yaml").write_text(node_doc(gpus=gpus))
    (manifests / "e.yaml").write_text(fake_engine_doc("fake"))
    model = model_doc("m", vram="5GiB", pin=True).replace("/srv/models/m.gguf", str(broken))
    (manifests / "m.yaml").write_text(model)
    plan = run_cli("plan", manifests, "--json", cwd=tmp_path, state_dir=tmp_path / "state")
    assert plan.code == 2, plan.output
    estimate = plan.json()["models"]["m"]["estimate"]
    assert estimate["bytes"] == 5 * 2**30 and estimate["source"] == "spec.vram", estimate
    assert plan.json()["gpus"]["placements"]["m"]["gpus"] == [0]
