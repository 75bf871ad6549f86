"""Request bodies: parsed once, forwarded untouched, bad ones refused precisely (never a 500)."""

from __future__ import annotations

import json

import pytest

from proxy import ProxySettings
from tests.proxy.conftest import MakeProxy, Proxy
from tests.proxy.fakegateway import FakeModel
from tests.proxy.util import assert_balanced, chat_body


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b"", "invalid_json", "request body is empty"),
        (b"{not json", "invalid_json", "request body is not valid JSON"),
        (b'{"model": "alpha"', "invalid_json", "not valid JSON: Input data was truncated"),
        (b'["model"]', "invalid_json", "must be a JSON object, got an array"),
        (b'{"messages": []}', "missing_model", "missing required field `model`"),
        (b'{"model": 42}', "invalid_model", "`model` must be a non-empty string, got a number"),
        (b'{"model": "  "}', "invalid_model", "`model` must be a non-empty string"),
        (b"\xff\xfe", "invalid_json", "not valid JSON"),
    ],
)
def test_malformed_bodies_are_400_with_a_precise_message(
    shared: Proxy, body: bytes, code: str, message: str
) -> None:
    with shared.http() as http:
        reply = http.post(
            "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
        )
    assert reply.status_code == 400
    error = reply.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error"
    assert message in error["message"]


def test_body_is_forwarded_byte_for_byte(shared: Proxy) -> None:
    raw = b'{ "model" : "alpha",\n "messages": [{"role": "user", "content": "caf\\u00e9"}] }'
    with shared.http() as http:
        assert http.post("/v1/chat/completions", content=raw).status_code == 200
    last = shared.backend("alpha").last_request()
    assert last is not None
    assert last["headers"]["content-length"] == str(len(raw))
    assert last["body"]["messages"][0]["content"] == "café"


def test_x_fields_are_stripped_and_other_fields_kept(shared: Proxy) -> None:
    body = chat_body("alpha", x_priority="high", x_tag="abc", temperature=0.5, seed=7)
    with shared.http() as http:
        assert http.post("/v1/chat/completions", json=body).status_code == 200
    sent = shared.backend("alpha").last_request()["body"]  # type: ignore[index]
    assert sent == chat_body("alpha", temperature=0.5, seed=7)


def test_proxy_headers_are_not_forwarded_but_others_are(shared: Proxy) -> None:
    with shared.http() as http:
        reply = http.post(
            "/v1/chat/completions",
            json=chat_body("alpha"),
            headers={"X-Priority": "high", "X-Request-Id": "r-1", "Connection": "keep-alive"},
        )
    assert reply.status_code == 200
    headers = shared.backend("alpha").last_request()["headers"]  # type: ignore[index]
    assert headers["x-request-id"] == "r-1"
    assert "x-priority" not in headers
    assert headers["host"].startswith("127.0.0.1:")
    # Our server's own Date/Server headers, once each (not the backend's as well).
    assert reply.headers.get_list("server") == ["uvicorn"]
    assert len(reply.headers.get_list("date")) == 1


def small_limit_proxy(make_proxy: MakeProxy) -> Proxy:
    return make_proxy([FakeModel("m")], ProxySettings(max_body_bytes=1000))


def test_a_body_over_the_limit_is_413(make_proxy: MakeProxy) -> None:
    proxy = small_limit_proxy(make_proxy)
    big = chat_body("m", "x" * 2000)
    with proxy.http() as http:
        declared = http.post("/v1/chat/completions", json=big)

        def chunks():  # no Content-Length: the limit is enforced while reading
            raw = json.dumps(big).encode()
            for i in range(0, len(raw), 300):
                yield raw[i : i + 300]

        chunked = http.post("/v1/chat/completions", content=chunks())
        fine = http.post("/v1/chat/completions", json=chat_body("m", "x" * 100))
    for reply in (declared, chunked):
        assert reply.status_code == 413
        assert reply.json()["error"]["code"] == "request_too_large"
        assert "1000 bytes" in reply.json()["error"]["message"]
    assert fine.status_code == 200
    assert proxy.gateway.begun["m"] == 1


def multipart(fields: list[tuple[str, bytes, str | None]], boundary: str = "b0undary") -> bytes:
    parts = []
    for name, value, filename in fields:
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
        if filename:
            head += "Content-Type: application/octet-stream\r\n"
        parts.append(head.encode() + b"\r\n" + value + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


MULTIPART = {"content-type": "multipart/form-data; boundary=b0undary"}


@pytest.mark.parametrize("model_first", [True, False])
def test_multipart_is_routed_by_its_model_field(make_proxy: MakeProxy, model_first: bool) -> None:
    proxy = make_proxy([FakeModel("whisper")])
    audio = bytes(range(256)) * 4096  # 1 MiB
    fields = [("file", audio, "a.wav"), ("language", b"en", None)]
    fields.insert(0 if model_first else 2, ("model", b"whisper", None))
    body = multipart(fields)

    def chunks():
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    with proxy.http() as http:
        sized = http.post("/v1/audio/transcriptions", content=body, headers=MULTIPART)
        streamed = http.post("/v1/audio/transcriptions", content=chunks(), headers=MULTIPART)
    for reply in (sized, streamed):
        assert reply.status_code == 200, reply.text
        echo = reply.json()
        assert echo["path"] == "/v1/audio/transcriptions" and echo["model"] == "whisper"
        assert echo["bytes"] == len(body)
        assert echo["content_type"] == MULTIPART["content-type"]
    assert_balanced(proxy.gateway)


def test_multipart_with_the_official_client(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([FakeModel("whisper")])
    audio = b"RIFF" + b"\0" * 5000
    reply = proxy.client().audio.transcriptions.create(
        model="whisper", file=("a.wav", audio, "audio/wav")
    )
    echo = reply.model_dump()  # the fake backend echoes what reached it
    assert echo["model"] == "whisper" and echo["path"] == "/v1/audio/transcriptions"
    assert echo["content_type"].startswith("multipart/form-data") and echo["bytes"] > len(audio)


def test_multipart_errors(make_proxy: MakeProxy) -> None:
    proxy = make_proxy([FakeModel("whisper")], ProxySettings(max_body_bytes=100_000))
    no_model = multipart([("file", b"abc", "a.wav")])
    too_big = multipart([("model", b"whisper", None), ("file", b"x" * 200_000, "a.wav")])

    def chunks(body: bytes):
        for i in range(0, len(body), 10_000):
            yield body[i : i + 10_000]

    with proxy.http() as http:
        missing = http.post("/v1/audio/transcriptions", content=no_model, headers=MULTIPART)
        unknown = http.post(
            "/v1/audio/transcriptions",
            content=multipart([("model", b"nope", None)]),
            headers=MULTIPART,
        )
        garbage = http.post(
            "/v1/audio/transcriptions", content=b"not multipart at all", headers=MULTIPART
        )
        no_boundary = http.post(
            "/v1/audio/transcriptions",
            content=no_model,
            headers={"content-type": "multipart/form-data"},
        )
        # Model found, then the rest is streamed on: the limit still holds.
        streamed_too_big = http.post(
            "/v1/audio/transcriptions", content=chunks(too_big), headers=MULTIPART
        )
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_model"
    assert unknown.status_code == 404
    assert garbage.status_code == 400
    assert no_boundary.status_code == 400
    assert "boundary" in no_boundary.json()["error"]["message"]
    assert streamed_too_big.status_code == 413
    assert_balanced(proxy.gateway)


def test_other_methods_and_paths(shared: Proxy) -> None:
    with shared.http() as http:
        put = http.put("/v1/chat/completions", json=chat_body("alpha"))
        nowhere = http.get("/nowhere")
    assert put.status_code == 405 and put.json()["error"]["code"] == "method_not_allowed"
    assert nowhere.status_code == 404 and "error" in nowhere.json()


def test_any_v1_post_naming_a_model_is_routed(shared: Proxy) -> None:
    with shared.http() as http:
        reply = http.post("/v1/rerank?top=2", json={"model": "beta", "query": "q"})
    assert reply.status_code == 200
    assert reply.json()["path"] == "/v1/rerank?top=2" and reply.json()["model"] == "beta"
