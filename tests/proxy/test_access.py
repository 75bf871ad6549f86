"""API keys: who may call, which models a key sees and reaches, who may use the admin API."""

from __future__ import annotations

import openai
import pytest

from proxy.auth import hash_key
from proxy.gateway import ApiKey
from tests.proxy.conftest import MakeProxy, Proxy
from tests.proxy.fakegateway import FakeModel
from tests.proxy.util import chat_body

KEYS = [
    ApiKey("ops", hash_key("sk-ops"), ("*",)),
    ApiKey("search", hash_key("sk-search"), ("alpha*", "gpt-4o-*")),
]


@pytest.fixture
def keyed(make_proxy: MakeProxy) -> Proxy:
    models = [FakeModel("alpha", aliases=("a1",)), FakeModel("beta", aliases=("gpt-4o-mini",))]
    return make_proxy(models, keys=KEYS)


def ask(proxy: Proxy, key: str, model: str) -> str:
    reply = proxy.client(key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}]
    )
    return reply.choices[0].message.content or ""


def test_a_bad_or_missing_key_is_401(keyed: Proxy) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(keyed, "sk-wrong", "alpha")
    assert caught.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        keyed.client("sk-wrong").models.list()
    with keyed.http() as http:
        missing = http.post("/v1/chat/completions", json=chat_body("alpha"))
        basic = http.get("/v1/models", headers={"Authorization": "Basic c2stb3Bz"})
        upstream = http.get("/upstream/alpha/health")
    assert (
        missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
    )
    assert basic.status_code == 401 and "malformed" in basic.json()["error"]["message"]
    assert upstream.status_code == 401
    assert keyed.gateway.wake_calls == {}  # nothing was woken for unauthenticated callers


def test_a_key_sees_and_reaches_only_its_models(keyed: Proxy) -> None:
    seen = {m.id for m in keyed.client("sk-search").models.list()}
    # beta is reached through its alias gpt-4o-mini matching `gpt-4o-*`: a key reaches a model
    # when a glob matches its name or an alias, and then sees all of its names.
    assert seen == {"alpha", "a1", "beta", "gpt-4o-mini"}
    keyed.gateway.keys = [KEYS[0], ApiKey("search", hash_key("sk-search"), ("alpha*",))]
    assert {m.id for m in keyed.client("sk-search").models.list()} == {"alpha", "a1"}
    assert ask(keyed, "sk-search", "a1").startswith("alpha@")
    for hidden in ("beta", "gpt-4o-mini"):
        with pytest.raises(openai.NotFoundError) as caught:
            ask(keyed, "sk-search", hidden)
        assert caught.value.code == "model_not_found"
        with pytest.raises(openai.NotFoundError):
            keyed.client("sk-search").models.retrieve(hidden)
    with keyed.http(headers={"Authorization": "Bearer sk-search"}) as http:
        assert http.get("/upstream/beta/health").status_code == 404
    assert "beta" not in keyed.gateway.wake_calls
    assert {m.id for m in keyed.client("sk-ops").models.list()} == {
        "alpha",
        "a1",
        "beta",
        "gpt-4o-mini",
    }


def test_the_proxy_key_is_not_forwarded(keyed: Proxy) -> None:
    ask(keyed, "sk-ops", "alpha")
    headers = keyed.backend("alpha").last_request()["headers"]  # type: ignore[index]
    assert "authorization" not in headers


def test_without_keys_authorization_passes_through(shared: Proxy) -> None:
    shared.client("backend-token").chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": "x"}]
    )
    headers = shared.backend("alpha").last_request()["headers"]  # type: ignore[index]
    assert headers["authorization"] == "Bearer backend-token"


def test_admin_api_needs_an_all_models_key(keyed: Proxy) -> None:
    with keyed.http() as http:
        for path in ("/healthz", "/readyz"):
            assert http.get(path).status_code == 200  # probes carry no keys
        assert http.get("/api/status").status_code == 401
        assert http.get("/metrics").status_code == 401
        scoped = {"Authorization": "Bearer sk-search"}
        denied = http.post("/api/models/alpha/unload", headers=scoped)
        assert denied.status_code == 403
        assert denied.json()["error"]["type"] == "permission_error"
        assert http.get("/metrics", headers=scoped).status_code == 403
        admin = {"Authorization": "Bearer sk-ops"}
        assert http.get("/api/status", headers=admin).status_code == 200
        assert http.get("/metrics", headers=admin).status_code == 200
