"""Wake on demand, stay-warm, pins, requests in flight and manual load/unload, against one real
``modelplane run``. Each test uses its own models; the resync is long (60 s), so every unload
seen here comes from the stay-warm clock, not from a periodic pass.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

import pytest

from tests.helpers.manifests import fake_engine_doc, model_doc
from tests.service.conftest import Box, module_box, node_doc, wait_until

PID = re.compile(r"pid=(\d+)")


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    docs = {
        "node.yaml": node_doc(resync="60s", proxy={"loadingCommentInterval": "1s"}),
        "engines.yaml": "---\n".join(
            [
                fake_engine_doc("fake"),
                fake_engine_doc("slow-start", "--startup-delay", "3"),
                fake_engine_doc("slow-stream", "--token-delay", "0.2"),
            ]
        ),
        "models.yaml": "---\n".join(
            [
                model_doc("sleepy", stayWarm="2s"),
                model_doc("loader", engine="slow-start", stayWarm="10m"),
                model_doc("zero", stayWarm="0"),
                model_doc("pinned", pin=True, stayWarm="1s"),
                model_doc("witness", stayWarm="1s"),
                model_doc("streamer", engine="slow-stream", stayWarm="1s"),
                model_doc("manual", stayWarm="10m"),
            ]
        ),
    }
    yield from module_box(tmp_path_factory, docs)


LIFECYCLE = ("Starting", "Started", "Unloaded")


def kinds(box: Box, model: str) -> list[str]:
    """The model's start and unload events, oldest first."""
    return [e["kind"] for e in box.events(model, LIFECYCLE)]


def pid_of(text: str | None) -> int:
    match = PID.search(text or "")
    assert match, f"no pid in {text!r}"
    return int(match.group(1))


def chat(box: Box, model: str, content: str = "hi") -> str:
    reply = box.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}]
    )
    return reply.choices[0].message.content or ""


async def test_concurrent_requests_start_an_asleep_model_once(box: Box) -> None:
    assert box.svc.model("sleepy")["phase"] == "Asleep"
    client = box.async_client()

    async def one(i: int) -> str:
        reply = await client.chat.completions.create(
            model="sleepy", messages=[{"role": "user", "content": f"request {i}"}]
        )
        return reply.choices[0].message.content or ""

    answers = await asyncio.gather(*(one(i) for i in range(20)))
    await client.close()
    assert all(f"echo: request {i}" in a for i, a in enumerate(answers))
    assert len({pid_of(a) for a in answers}) == 1
    assert kinds(box, "sleepy") == ["Starting", "Started"]

    # stay-warm expiry (2 s, with a 60 s resync) unloads it; the next request wakes it again
    first_pid = pid_of(answers[0])
    box.svc.wait_phase("sleepy", "Asleep", timeout=20)
    unloaded = [e for e in box.events("sleepy") if e["kind"] == "Unloaded"]
    assert len(unloaded) == 1 and "stayWarm 2s" in unloaded[0]["message"]
    again = chat(box, "sleepy")
    assert pid_of(again) != first_pid
    assert kinds(box, "sleepy") == ["Starting", "Started", "Unloaded", "Starting", "Started"]


def test_a_stream_waiting_for_a_slow_start_gets_loading_comments(box: Box) -> None:
    assert box.svc.model("loader")["phase"] == "Asleep"
    body = {"model": "loader", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    comments, data = [], []
    with box.http() as http, http.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200
        for line in reply.iter_lines():
            if line.startswith(":"):
                assert not data, "a loading comment after the first data line"
                comments.append(line)
            elif line.startswith("data: "):
                data.append(line)
    assert len(comments) >= 2, comments  # a 3 s start, a comment every second
    assert all(c.startswith(": loading loader (") for c in comments), comments
    assert data[-1] == "data: [DONE]"
    assert box.svc.model("loader")["phase"] == "Ready"


def test_stay_warm_zero_unloads_right_after_use(box: Box) -> None:
    assert "zero@" in chat(box, "zero")
    box.svc.wait_phase("zero", "Asleep", timeout=20)
    unloaded = [e["message"] for e in box.events("zero") if e["kind"] == "Unloaded"]
    assert len(unloaded) == 1 and "stayWarm 0" in unloaded[0]


def test_a_pinned_model_is_never_unloaded(box: Box) -> None:
    box.svc.wait_phase("pinned", "Ready")
    pid = pid_of(chat(box, "pinned"))
    chat(box, "witness")
    # witness has the same stayWarm (1 s): once it is unloaded, the pinned one was past it too
    box.svc.wait_phase("witness", "Asleep", timeout=20)
    time.sleep(0.5)
    assert box.svc.model("pinned")["phase"] == "Ready"
    assert pid_of(chat(box, "pinned")) == pid
    assert "Unloaded" not in kinds(box, "pinned")


def test_a_model_with_a_request_in_flight_is_not_unloaded(box: Box) -> None:
    before = len([k for k in kinds(box, "witness") if k == "Unloaded"])
    stream = box.client().chat.completions.create(
        model="streamer",
        messages=[{"role": "user", "content": "long"}],
        stream=True,
        max_tokens=200,  # 40 s of tokens: the test ends the stream itself
    )
    received = 0
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if not delta:
            continue
        received += 1
        if received == 1:  # streamer is running: use witness (stayWarm 1 s, like streamer)
            chat(box, "witness")
        elif len([k for k in kinds(box, "witness") if k == "Unloaded"]) > before:
            break  # a stay-warm pass ran while streamer was past its own stayWarm
    else:
        pytest.fail("the stream ended before the witness model was unloaded")
    # a pass ran past streamer's stayWarm while it was streaming: it stayed
    assert box.svc.model("streamer")["phase"] == "Ready"
    assert "Unloaded" not in kinds(box, "streamer")
    stream.close()  # the request ends now; the idle clock starts
    box.svc.wait_phase("streamer", "Asleep", timeout=20)


def test_manual_load_and_unload(box: Box) -> None:
    status, body = box.svc.request("POST", "/api/models/manual/load")
    assert (status, body["phase"]) == (200, "Ready"), body
    assert box.svc.model("manual")["phase"] == "Ready"
    assert "manual@" in chat(box, "manual")
    status, body = box.svc.request("POST", "/api/models/manual/unload")
    assert (status, body["phase"]) == (200, "Asleep"), body
    assert kinds(box, "manual") == ["Starting", "Started", "Unloaded"]
    assert box.svc.model("manual")["phase"] == "Asleep"

    box.svc.wait_phase("pinned", "Ready")
    status, body = box.svc.request("POST", "/api/models/pinned/unload")
    assert status == 409
    assert "pinned" in body["error"]["message"] and "pin: false" in body["error"]["message"]
    assert box.svc.model("pinned")["phase"] == "Ready"
    status, body = box.svc.request("POST", "/api/models/nope/load")
    assert status == 404
    wait_until(lambda: box.svc.model("manual")["phase"] == "Asleep", what="still asleep")
