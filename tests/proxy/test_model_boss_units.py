"""Model Boss's request fields, the per-client cooldown, the queue view and the loading
deltas: the pure parts (the HTTP behaviour is tested against a running service)."""

from __future__ import annotations

import json

import pytest

from proxy.body import parse_json_request
from proxy.cooldown import ClientCooldowns
from proxy.errors import ProxyError
from proxy.gateway import ModelRoute, Phase
from proxy.hints import ClientHints, read_hints
from proxy.loading import reasoning_event
from proxy.queueing import QueueStats, queue_json


def test_hints_are_read_and_stripped_before_forwarding() -> None:
    raw = json.dumps(
        {"model": "m", "x_client_id": "bot-7", "x_stay_warm": "10m", "x_cooldown": 2}
    ).encode()
    request = parse_json_request(raw)
    assert request.hints == ClientHints("bot-7", 600.0, 2.0)
    assert json.loads(request.content) == {"model": "m"}
    assert read_hints({"model": "m"}) == ClientHints()
    assert read_hints({"x_stay_warm": "1.5h"}).stay_warm == 5400.0


@pytest.mark.parametrize(
    "field",
    [{"x_client_id": ""}, {"x_client_id": 7}, {"x_stay_warm": "soon"}, {"x_cooldown": -1}],
)
def test_malformed_hints_are_400_naming_the_field(field: dict[str, object]) -> None:
    with pytest.raises(ProxyError) as caught:
        read_hints(field)
    assert caught.value.status == 400 and next(iter(field)) in str(caught.value)


def test_cooldown_spaces_one_clients_requests() -> None:
    cooldowns = ClientCooldowns()
    assert cooldowns.check("a", 2.0, now=100.0) is None
    assert cooldowns.check("a", 2.0, now=101.5) == pytest.approx(0.5)
    assert cooldowns.check("b", 2.0, now=101.5) is None  # per client
    assert cooldowns.check("a", 2.0, now=102.0) is None
    assert cooldowns.check("a", None, now=102.1) is None  # no cooldown asked: never refused


def test_cooldowns_forget_clients_not_seen_for_an_hour() -> None:
    cooldowns = ClientCooldowns()
    for i in range(100):
        cooldowns.check(f"old-{i}", 2.0, now=float(i))
    assert len(cooldowns) == 100
    cooldowns.check("new", 2.0, now=3700.0)  # an hour on: the next prune drops the old ones
    assert len(cooldowns) == 1


def test_queue_json() -> None:
    routes = [ModelRoute("a", max_concurrency=2, phase=Phase.READY), ModelRoute("b")]
    view = queue_json(routes, {"a": QueueStats(in_flight=2, queued=3)})
    assert view["queued"] == 3 and view["inFlight"] == 2
    assert view["models"]["a"] == {
        "queued": 3,
        "inFlight": 2,
        "maxConcurrency": 2,
        "phase": "Ready",
    }
    assert view["models"]["b"]["queued"] == 0


def test_reasoning_event_is_a_chat_chunk() -> None:
    event = reasoning_event("qwen", "Loading qwen…", created=1)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    chunk = json.loads(event[6:])
    assert chunk["object"] == "chat.completion.chunk" and chunk["model"] == "qwen"
    assert chunk["choices"][0]["delta"]["reasoning_content"] == "Loading qwen…"
