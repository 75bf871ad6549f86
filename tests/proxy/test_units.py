"""Pure parts: body parsing, multipart scanning, usage scanning, header hygiene, keys, logs."""

from __future__ import annotations

import io
import itertools
import json
import logging
import re
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.auth import OPEN, authenticate, bearer_token, hash_key
from proxy.body import MultipartModelFinder, multipart_boundary, parse_json_request
from proxy.errors import ProxyError
from proxy.forward import classify, request_headers, response_headers
from proxy.gateway import ApiKey, ModelRoute
from proxy.logsetup import JsonFormatter, access_log, setup_logging
from proxy.metrics import LATENCY_BUCKETS
from proxy.tallies import RequestTallies
from proxy.upstream import UpstreamError
from proxy.usage import Tail, Usage, find_usage

# --- JSON bodies ---------------------------------------------------------------------------------


def test_json_body_is_forwarded_as_is_without_x_fields() -> None:
    raw = b'{"model":"m","stream":true,"messages":[]}'
    request = parse_json_request(raw)
    assert (request.model, request.stream, request.x_priority) == ("m", True, None)
    assert request.content is raw  # the same bytes object: no copy, no re-encoding


def test_x_fields_are_stripped_once() -> None:
    request = parse_json_request(b'{"model":"m","x_priority":"high","x_a":1,"n":2}')
    assert request.x_priority == "high"
    assert json.loads(request.content) == {"model": "m", "n": 2}


def test_stream_must_be_true_to_count() -> None:
    assert parse_json_request(b'{"model":"m","stream":"yes"}').stream is False


def test_x_fields_spelt_with_escapes_are_stripped_too() -> None:
    request = parse_json_request(b'{"model":"m","\\u0078_priority":"low","n":1}')
    assert request.x_priority == "low"
    assert json.loads(request.content) == {"model": "m", "n": 1}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[1, 2]", "request body must be a JSON object, got an array"),
        (b'{"model": 3}', "`model` must be a non-empty string, got a number"),
        (b'{"messages": []}', "missing required field `model`"),
        (b'{"model": "m",', "request body is not valid JSON"),
        (b" ", "request body is empty"),
    ],
)
def test_bad_json_bodies_say_what_is_wrong(raw: bytes, message: str) -> None:
    with pytest.raises(ProxyError, match=re.escape(message)) as caught:
        parse_json_request(raw)
    assert caught.value.status == 400


# --- multipart -----------------------------------------------------------------------------------


def encode_form(fields: list[tuple[str, bytes]], boundary: str) -> bytes:
    out = b""
    for name, value in fields:
        filename = '; filename="f.bin"' if name == "file" else ""
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'
            ).encode()
            + value
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode()


def find_model(body: bytes, boundary: str, cuts: list[int]) -> str | None:
    finder = MultipartModelFinder(boundary)
    edges = [0, *sorted(c % (len(body) + 1) for c in cuts), len(body)]
    for start, end in itertools.pairwise(edges):
        if (model := finder.feed(body[start:end])) is not None:
            return model
    return None


@settings(max_examples=200, deadline=None)
@given(
    before=st.lists(st.sampled_from(["file", "language", "prompt"]), max_size=3),
    payload=st.binary(max_size=3000),
    model=st.text(
        st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=40
    ).filter(str.strip),  # "\xa0" alone is whitespace: no model at all (a 400)
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_multipart_model_is_found_however_the_body_is_split(
    before: list[str], payload: bytes, model: str, cuts: list[int]
) -> None:
    boundary = "----formboundary7MA4YWxk"
    fields = [(name, payload) for name in before] + [("model", model.encode())]
    fields.append(("file", payload))
    body = encode_form(fields, boundary)
    assert find_model(body, boundary, cuts) == model.strip()


def test_multipart_without_model_finds_nothing() -> None:
    body = encode_form([("file", b"abc")], "bnd")
    assert find_model(body, "bnd", [3, 20]) is None


def test_multipart_garbage_is_a_400() -> None:
    with pytest.raises(ProxyError) as caught:
        MultipartModelFinder("bnd").feed(b"--bnd\r\nno header end" + b"x" * 10_000)
    assert caught.value.status == 400


def test_multipart_boundary() -> None:
    assert multipart_boundary('multipart/form-data; boundary="a b"') == "a b"
    assert multipart_boundary("application/json") is None
    with pytest.raises(ProxyError, match="without a boundary"):
        multipart_boundary("multipart/form-data")


# --- usage ---------------------------------------------------------------------------------------


def test_usage_from_a_json_reply() -> None:
    reply = (
        b'{"choices":[{"text":"the \\"usage\\": {}"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":5}}'
    )
    assert find_usage(reply) == Usage(3, 5)


def test_usage_from_the_last_sse_chunk_not_the_null_ones() -> None:
    events = b"".join(
        b'data: {"choices":[{"delta":{"content":"x"}}],"usage":null}\n\n' for _ in range(3)
    )
    events += b'data: {"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":9}}\n\n'
    events += b"data: [DONE]\n\n"
    assert find_usage(events) == Usage(2, 9)
    assert find_usage(events.replace(b'"prompt_tokens":2,', b"")) == Usage(None, 9)
    assert find_usage(b'data: {"usage":null}\n\n') is None
    assert find_usage(b"no usage here") is None


def test_usage_with_nested_details() -> None:
    reply = (
        b'{"usage": {"prompt_tokens": 7, "prompt_tokens_details": {"cached_tokens": 4},'
        b' "completion_tokens": 2}}'
    )
    assert find_usage(reply) == Usage(7, 2)


@given(st.lists(st.binary(min_size=1, max_size=700), max_size=50))
def test_tail_keeps_at_least_the_last_limit_bytes(chunks: list[bytes]) -> None:
    tail = Tail(limit=1000)
    for chunk in chunks:
        tail.add(chunk)
    whole = b"".join(chunks)
    kept = tail.bytes()
    assert whole.endswith(kept)
    assert len(kept) >= min(1000, len(whole))
    assert len(kept) < 1000 + 700  # bounded: at most one chunk beyond the limit


# --- headers and transport errors ------------------------------------------------------------


def test_request_headers_drop_hop_by_hop_host_length_and_connection_listed() -> None:
    headers = [
        (b"host", b"proxy:8400"),
        (b"content-length", b"12"),
        (b"connection", b"keep-alive, x-hop"),
        (b"x-hop", b"1"),
        (b"transfer-encoding", b"chunked"),
        (b"authorization", b"Bearer sk"),
        (b"x-priority", b"high"),
        (b"accept", b"text/event-stream"),
        (b"x-request-id", b"r"),
    ]
    assert request_headers(headers, drop_authorization=True) == [
        (b"accept", b"text/event-stream"),
        (b"x-request-id", b"r"),
    ]
    kept = request_headers(headers, drop_authorization=False)
    assert (b"authorization", b"Bearer sk") in kept


def test_response_headers_lowercased_and_cleaned() -> None:
    raw = [
        (b"Content-Type", b"text/event-stream"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Content-Length", b"10"),
        (b"Date", b"x"),
        (b"Server", b"fake"),
        (b"X-Backend", b"1"),
    ]
    assert response_headers(raw, keep_length=False) == [
        (b"content-type", b"text/event-stream"),
        (b"x-backend", b"1"),
    ]
    assert (b"content-length", b"10") in response_headers(raw, keep_length=True)


def test_transport_errors_classified() -> None:
    refused = UpstreamError("connect", "cannot connect: refused")
    assert refused.backend_failed
    assert (classify("m", refused).status, classify("m", refused).code) == (502, "backend_error")
    silent = UpstreamError("read_timeout", "no reply bytes for 5 s", 5.0)
    assert not silent.backend_failed
    assert (classify("m", silent).status, classify("m", silent).code) == (504, "timeout")
    assert "m sent nothing for 5s (idleTimeout)" in classify("m", silent).message
    unanswered = UpstreamError("head_timeout", "no reply within 2.5 s", 2.5)
    assert not unanswered.backend_failed
    assert "m did not answer within 2.5s (requestTimeout)" in classify("m", unanswered).message
    stuck = UpstreamError("write_timeout", "backend accepted no request bytes for 60 s")
    assert not stuck.backend_failed and classify("m", stuck).code == "backend_timeout"
    died = UpstreamError("closed", "backend closed the connection")
    assert died.backend_failed and "closed the connection" in classify("m", died).message


# --- keys ----------------------------------------------------------------------------------------


def test_keys() -> None:
    keys = [ApiKey("a", hash_key("sk-a"), ("qwen*",)), ApiKey("root", hash_key("sk-r"))]
    assert authenticate([], None) is OPEN and OPEN.admin
    scoped = authenticate(keys, "Bearer sk-a")
    assert scoped.key == keys[0] and not scoped.admin
    assert scoped.may_reach(ModelRoute("qwen-7b"))
    assert scoped.may_reach(ModelRoute("llama", aliases=("qwen-compat",)))
    assert not scoped.may_reach(ModelRoute("llama"))
    assert authenticate(keys, "bearer   sk-r ").admin
    for bad in (None, "", "Bearer", "Basic sk-a", "Bearer sk-x"):
        with pytest.raises(ProxyError) as caught:
            authenticate(keys, bad)
        assert caught.value.status == 401
    assert bearer_token("Token abc") is None
    upper = [ApiKey("u", hash_key("sk-u").upper())]
    assert authenticate(upper, "Bearer sk-u").key == upper[0]


# --- logs ----------------------------------------------------------------------------------------


def test_json_logs_carry_the_access_fields() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("json", "INFO", stream=stream)
        access_log("10.0.0.1", "POST", "/v1/chat/completions", "m", 200, 0.0123, 0.002, 3, 5)
        logging.getLogger("modelplane.proxy").warning("plain %s", "message")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["logger"] == "modelplane.access" and first["level"] == "info"
    assert first["model"] == "m" and first["status"] == 200 and first["latency_ms"] == 12.3
    assert first["prompt_tokens"] == 3 and first["completion_tokens"] == 5
    assert "model=m" in first["message"]
    assert second["message"] == "plain message" and "model" not in second
    with pytest.raises(ValueError, match="unknown log format"):
        setup_logging("xml")  # type: ignore[arg-type]


def test_json_formatter_includes_exceptions() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, None)
        record.exc_info = sys.exc_info()
    assert "RuntimeError: boom" in json.loads(JsonFormatter().format(record))["exc"]


# --- metrics -------------------------------------------------------------------------------------


def test_tallies_expose_what_prometheus_client_would() -> None:
    """The per-request tallies render the same text as prometheus_client's own metrics."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    tallies = RequestTallies(LATENCY_BUCKETS)
    ours.register(tallies)
    requests = Counter("modelplane_requests", "x", ["model", "status"], registry=theirs)
    latency = Histogram(
        "modelplane_request_duration_seconds",
        "x",
        ["model"],
        buckets=LATENCY_BUCKETS,
        registry=theirs,
    )
    ttft = Histogram(
        "modelplane_time_to_first_token_seconds",
        "x",
        ["model"],
        buckets=LATENCY_BUCKETS,
        registry=theirs,
    )
    tokens = Counter("modelplane_tokens", "x", ["model", "kind"], registry=theirs)
    upstream = Counter("modelplane_upstream_requests", "x", ["model", "status"], registry=theirs)
    observations = [
        ("a", 200, 0.004, None, Usage(3, 5)),
        ("a", 200, 0.005, 0.001, Usage(2, None)),
        ("a", 499, 7.0, 0.3, None),
        ("b", 502, 400.0, None, None),
        ("", 404, 0.0001, None, None),
    ]
    for model, status, seconds, first, usage in observations:
        tallies.observe(model, status, seconds, first, usage)
        requests.labels(model, str(status)).inc()
        latency.labels(model).observe(seconds)
        if first is not None:
            ttft.labels(model).observe(first)
        if usage and usage.prompt_tokens:
            tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        if usage and usage.completion_tokens:
            tokens.labels(model, "completion").inc(usage.completion_tokens)
    tallies.upstream("a", 200)
    upstream.labels("a", "200").inc()

    def samples(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return sorted(
            line
            for line in text.splitlines()
            if line and not line.startswith("#") and "_created" not in line
        )

    assert samples(ours) == samples(theirs)


# --- X-Forwarded-For -----------------------------------------------------------------------------


def test_forwarded_for_names_the_nearest_untrusted_address() -> None:
    from proxy.forwarded import ForwardedFor

    trusted = ForwardedFor("127.0.0.1, 10.0.0.0/8")
    assert trusted.trusts("127.0.0.1") and trusted.trusts("10.1.2.3")
    assert not trusted.trusts("192.0.2.1") and not trusted.trusts("not-an-address")
    assert trusted.client(b"203.0.113.7, 10.0.0.5") == "203.0.113.7"
    assert trusted.client(b"198.51.100.1, 203.0.113.7, 10.0.0.5") == "203.0.113.7"
    assert trusted.client(b"10.0.0.9, 127.0.0.1") == "10.0.0.9"  # all trusted: the first
    assert ForwardedFor(["*"]).trusts("192.0.2.1")
