"""The official ``openai`` client against a real ``modelplane run`` with API keys.

One service for the module: ``chat`` (pinned, streams slowly, alias ``gpt-4o-mini``) and
``spare`` (asleep). The Node's keys are hashed by ``modelplane hash-key``.
"""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.helpers.manifests import fake_engine_doc, model_doc
from tests.service.conftest import Box, hash_key, module_box, node_doc

ADMIN_KEY = "sk-test-admin"
SPARE_KEY = "sk-test-spare-only"


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    keys = [
        {"name": "admin", "sha256": hash_key(ADMIN_KEY)},
        {"name": "spare-only", "sha256": hash_key(SPARE_KEY), "models": ["spare"]},
    ]
    docs = {
        "node.yaml": node_doc(apiKeys=keys),
        "engine.yaml": fake_engine_doc("fake", "--token-delay", "0.1"),
        "chat.yaml": model_doc("chat", pin=True, aliases=["gpt-4o-mini"]),
        "spare.yaml": model_doc("spare", stayWarm="10m"),
    }
    yield from module_box(tmp_path_factory, docs, api_key=ADMIN_KEY)


def test_models_lists_models_and_aliases_with_their_phase(box: Box) -> None:
    box.svc.wait_phase("chat", "Ready")
    listed = {m.id: m for m in box.client().models.list()}
    assert set(listed) == {"chat", "gpt-4o-mini", "spare"}
    assert listed["chat"].model_extra["phase"] == "Ready"
    assert listed["gpt-4o-mini"].model_extra == {"phase": "Ready", "alias_of": "chat"}
    assert listed["spare"].model_extra["phase"] == "Asleep"


def test_a_key_sees_and_reaches_only_its_models(box: Box) -> None:
    client = box.client(api_key=SPARE_KEY)
    assert [m.id for m in client.models.list()] == ["spare"]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])


def test_chat_through_an_alias_reaches_the_model(box: Box) -> None:
    reply = box.client().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello there"}]
    )
    text = reply.choices[0].message.content or ""
    assert text.startswith("chat@")  # the fake backend names the model it was started for
    assert "echo: hello there" in text
    assert reply.usage is not None and reply.usage.completion_tokens == 8


def test_chat_stream_arrives_chunk_by_chunk(box: Box) -> None:
    backend = box.backend("chat")
    done_before = backend.stats()["completed"]
    stream = box.client().chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
        max_tokens=20,  # 20 tokens, 0.1 s apart
    )
    deltas: list[str] = []
    in_flight_at_first_token = None
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta and in_flight_at_first_token is None:
            stats = backend.stats()  # the backend is still generating the rest
            in_flight_at_first_token = (stats["in_flight"], stats["completed"])
        if delta:
            deltas.append(delta)
    assert in_flight_at_first_token == (1, done_before)
    assert len(deltas) == 20
    assert "".join(deltas).startswith("chat@")


def test_completions(box: Box) -> None:
    reply = box.client().completions.create(model="chat", prompt="once upon", max_tokens=5)
    assert reply.choices[0].text.startswith("chat@")
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_embeddings(box: Box) -> None:
    reply = box.client().embeddings.create(model="chat", input=["a", "b", "a"])
    vectors = [d.embedding for d in reply.data]
    assert len(vectors) == 3 and len(vectors[0]) == 16
    assert vectors[0] == vectors[2] != vectors[1]


def test_unknown_model_is_not_found(box: Box) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        box.client().chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    assert "no-such-model" in caught.value.message


def test_a_bad_body_is_a_bad_request(box: Box) -> None:
    client = box.client()
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/chat/completions", body={"messages": []}, cast_to=object)
    assert "model" in caught.value.message
    with box.http() as http:
        broken = http.post(
            "/v1/chat/completions",
            content=b'{"model": "chat", "messages": [',
            headers={"content-type": "application/json"},
        )
    assert broken.status_code == 400
    assert broken.json()["error"]["type"] == "invalid_request_error"


def test_a_bad_key_is_refused(box: Box) -> None:
    with pytest.raises(openai.AuthenticationError):
        box.client(api_key="sk-wrong").models.list()
    with pytest.raises(openai.AuthenticationError):
        box.client(api_key="sk-wrong").chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "x"}]
        )
    status, _ = box.svc.request("GET", "/api/status", headers={"authorization": "Bearer nope"})
    assert status == 401
