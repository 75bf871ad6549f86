"""Model Boss's request fields and views against a real ``modelplane run`` (fake backends):
``x_client_id`` in the request log, ``x_stay_warm`` capped by ``Node.proxy.maxStayWarm``,
``x_cooldown`` per client, ``GET /v1/queue``, and loading progress as ``reasoning_content``.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.helpers.cli import run_cli
from tests.helpers.manifests import fake_engine_doc, model_doc
from tests.service.conftest import Box, module_box, node_doc, wait_until


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield from module_box(
        tmp_path_factory,
        {
            "node.yaml": node_doc(proxy={"maxStayWarm": "20s", "loadingCommentInterval": "1s"}),
            "engine.yaml": fake_engine_doc("fake")
            + "---\n"
            + fake_engine_doc("slow", "--listen-delay", "2"),
            "chat.yaml": model_doc("chat", pin=True, maxConcurrency=4),
            "quick.yaml": model_doc("quick", stayWarm="0"),
            "ui.yaml": model_doc("ui", engine="slow", stayWarm="1m", loadingAsReasoning=True),
        },
    )


def _ask(box: Box, model: str, **fields: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **fields}
    with box.http() as http:
        return http.post("/v1/chat/completions", json=body)


def test_x_client_id_is_the_client_in_the_request_log(box: Box) -> None:
    assert _ask(box, "chat", x_client_id="discord-bot-7").status_code == 200
    rows = wait_until(
        lambda: [r for r in box.svc.get("/api/requests") if r["client"] == "discord-bot-7"],
        what="the request logged under its x_client_id",
    )
    assert rows[0]["model"] == "chat" and rows[0]["status"] == 200
    listed = run_cli(
        "requests", "--client", "discord-bot-7", cwd=box.state_dir.parent, state_dir=box.state_dir
    )
    assert listed.code == 0 and "discord-bot-7" in listed.stdout, listed.output
    backend_saw = box.backend("chat").requests()[-1]
    assert "x_client_id" not in json.dumps(backend_saw)  # stripped before forwarding


def test_x_stay_warm_keeps_a_model_loaded_up_to_the_node_cap(box: Box) -> None:
    asked = time.time()
    assert _ask(box, "quick", x_stay_warm="1h").status_code == 200
    entry = box.svc.model("quick")  # stayWarm 0 would unload it right away
    assert entry["phase"] == "Ready", entry
    assert entry["unloadAt"] is not None
    assert asked + 10 < entry["unloadAt"] <= time.time() + 20  # 1h asked, Node caps at 20s
    box.svc.wait_phase("quick", "Asleep", timeout=40)  # then it goes, as stayWarm 0 says


def test_x_cooldown_spaces_one_clients_requests(box: Box) -> None:
    assert _ask(box, "chat", x_client_id="slowpoke", x_cooldown=60).status_code == 200
    refused = _ask(box, "chat", x_client_id="slowpoke", x_cooldown=60)
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "cooldown"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert _ask(box, "chat", x_client_id="someone-else", x_cooldown=60).status_code == 200
    bad = _ask(box, "chat", x_cooldown="soon")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "x_cooldown"


def test_v1_queue(box: Box) -> None:
    with box.http() as http:
        view = http.get("/v1/queue").json()
    assert set(view["models"]) == {"chat", "quick", "ui"}
    assert view["models"]["chat"]["maxConcurrency"] == 4
    assert view["models"]["chat"]["phase"] == "Ready"
    assert view["queued"] == sum(m["queued"] for m in view["models"].values())


def test_loading_progress_as_reasoning_content(box: Box) -> None:
    """ui opts in (loadingAsReasoning): while it starts, a chat UI sees the progress in the
    reasoning box; then the answer streams as usual."""
    body = {"model": "ui", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    reasoning, content, comments = [], [], []
    with box.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith(":"):
                comments.append(line)
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"]
            reasoning.append(delta.get("reasoning_content") or "")
            content.append(delta.get("content") or "")
    assert reasoning[0] == "Loading ui…", reasoning
    assert "".join(content), "no answer after the loading deltas"
    assert not [c for c in comments if "loading" in c], (comments, reasoning, content)
    # The time to the first token is the answer's, not the first loading delta's: the slow
    # engine listens only after 2 s.
    with box.http() as http:
        (logged,) = http.get("/api/requests", params={"model": "ui", "limit": 1}).json()
    assert logged["ttft"] >= 2.0, logged
