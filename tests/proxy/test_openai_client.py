"""The official openai client against the proxy, with fake backends as real processes."""

from __future__ import annotations

import base64
import struct

import openai
import pytest

from tests.proxy.conftest import MakeProxy, Proxy
from tests.proxy.fakegateway import FakeModel
from tests.proxy.util import assert_balanced, wait_until


def chat(proxy: Proxy, model: str, text: str = "hello", **kwargs: object):
    return proxy.client().chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], **kwargs
    )


def test_models_lists_every_model_and_alias_with_phase(shared: Proxy) -> None:
    models = {m.id: m for m in shared.client().models.list()}
    assert set(models) == {"alpha", "gpt-4o-mini", "beta"}
    assert models["alpha"].phase in ("Asleep", "Ready")  # type: ignore[attr-defined]
    assert models["gpt-4o-mini"].alias_of == "alpha"  # type: ignore[attr-defined]
    assert shared.client().models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"


def test_chat_wakes_the_model_and_answers(shared: Proxy) -> None:
    reply = chat(shared, "alpha", "ping pong")
    backend = shared.backend("alpha")
    text = reply.choices[0].message.content or ""
    assert text.startswith(f"alpha@{backend.port} ")
    assert "echo: ping pong" in text
    assert reply.usage is not None and reply.usage.completion_tokens == 8
    assert shared.client().models.retrieve("alpha").phase == "Ready"  # type: ignore[attr-defined]


def test_alias_routes_to_its_model(shared: Proxy) -> None:
    reply = chat(shared, "gpt-4o-mini")
    assert (reply.choices[0].message.content or "").startswith("alpha@")


def test_chat_streamed(shared: Proxy) -> None:
    stream = chat(shared, "beta", "streamed words", stream=True)
    deltas = [c.choices[0].delta.content for c in stream if c.choices]
    text = "".join(d for d in deltas if d)
    assert text.startswith("beta@") and len([d for d in deltas if d]) == 4


def test_completions(shared: Proxy) -> None:
    reply = shared.client().completions.create(model="beta", prompt="complete me", max_tokens=3)
    assert reply.choices[0].text.startswith("beta@")
    assert reply.usage is not None and reply.usage.completion_tokens == 3


def test_embeddings(shared: Proxy) -> None:
    reply = shared.client().embeddings.create(model="alpha", input=["a", "b"])
    assert [d.index for d in reply.data] == [0, 1]
    assert len(reply.data[0].embedding) == 16
    raw = shared.client().embeddings.create(model="alpha", input="a", encoding_format="base64")
    vector = struct.unpack("<16f", base64.b64decode(raw.data[0].embedding))  # type: ignore[arg-type]
    assert vector == pytest.approx(reply.data[0].embedding)


def test_unknown_model_is_not_found(shared: Proxy) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        chat(shared, "no-such-model")
    assert caught.value.code == "model_not_found"
    assert "no-such-model" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        shared.client().models.retrieve("no-such-model")


def test_bad_body_is_bad_request(shared: Proxy) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        shared.client().chat.completions.create(model="", messages=[])
    assert caught.value.code == "invalid_model"


def test_the_app_answers_under_any_asgi_server_too(make_proxy: MakeProxy) -> None:
    """Served by uvicorn's own protocol (not the proxy's), the app's ASGI routes answer the
    same: models, a plain and a streamed chat, the request log."""
    proxy = make_proxy([FakeModel("m", backend_args=("--tokens", "3"))], native=False)
    assert [m.id for m in proxy.client().models.list()] == ["m"]
    assert (chat(proxy, "m").choices[0].message.content or "").startswith("m@")
    deltas = [c.choices[0].delta.content for c in chat(proxy, "m", stream=True) if c.choices]
    assert len([d for d in deltas if d]) == 3
    wait_until(lambda: len(proxy.gateway.records) == 2, what="two request records")
    assert [r.status for r in proxy.gateway.records] == [200, 200]
    assert_balanced(proxy.gateway)
