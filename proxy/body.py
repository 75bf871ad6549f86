"""Reading what a request is for, parsing its body once.

JSON bodies are decoded once (msgspec) to read ``model``, ``stream`` and ``x_priority``; the
original bytes are forwarded untouched unless ``x_*`` fields must be stripped, and only then is
the body re-encoded, once. Multipart bodies (audio transcription and the like) are not buffered
whole: :class:`MultipartModelFinder` feeds chunks to an incremental parser until the ``model``
form field is complete; only the bytes up to there are held, the rest is streamed to the backend.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec
import multipart

from proxy.errors import ProxyError, bad_request
from proxy.hints import NONE, ClientHints, read_hints

MAX_MODEL_NAME = 256
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class ApiRequest(NamedTuple):
    """A parsed OpenAI request: whom it is for and what to forward."""

    model: str
    stream: bool
    x_priority: object | None
    content: bytes
    hints: ClientHints = NONE  # x_client_id, x_stay_warm, x_cooldown (proxy/hints.py)


def _json_type(value: object) -> str:
    names = {list: "an array", str: "a string", int: "a number", float: "a number"}
    names |= {bool: "a boolean", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def check_model(value: object) -> str:
    """The ``model`` field must be a short non-empty string."""
    if value is None:
        raise bad_request("missing required field `model`", "missing_model", param="model")
    if not isinstance(value, str) or not value.strip():
        raise bad_request(
            f"`model` must be a non-empty string, got {_json_type(value)}",
            "invalid_model",
            param="model",
        )
    if len(value) > MAX_MODEL_NAME:
        raise _model_too_long()
    return value


def _model_too_long() -> ProxyError:
    return bad_request(
        f"`model` is longer than {MAX_MODEL_NAME} characters", "invalid_model", param="model"
    )


def no_model_field() -> ProxyError:
    """For a multipart body that ended without a ``model`` field."""
    return bad_request("multipart body has no `model` form field", "missing_model", param="model")


class _Fields(msgspec.Struct):
    """The fields the proxy reads: msgspec checks the whole body is valid JSON but builds
    nothing for the rest of it (the messages of a long prompt stay bytes)."""

    model: Any = None
    stream: Any = None


_fields_decoder = msgspec.json.Decoder(_Fields)


def parse_json_request(raw: bytes) -> ApiRequest:
    """Read ``model`` and ``stream``; strip top-level ``x_*`` fields (modelplane's, not the
    backend's), re-encoding the body only then."""
    if b'"x_' in raw or b"\\u" in raw:  # maybe x_ fields (possibly spelt with escapes)
        return _parse_whole(raw)
    try:
        fields = _fields_decoder.decode(raw)
    except msgspec.DecodeError:  # not JSON, or not an object: the whole decode says which
        return _parse_whole(raw)
    return ApiRequest(check_model(fields.model), fields.stream is True, None, raw)


def _parse_whole(raw: bytes) -> ApiRequest:
    """Decode the whole body: for ``x_*`` fields, and for exact error messages."""
    if not raw.strip():
        raise bad_request(
            "request body is empty: expected a JSON object with a `model` field", "invalid_json"
        )
    try:
        body = _decoder.decode(raw)
    except msgspec.DecodeError as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request(
            f"request body must be a JSON object, got {_json_type(body)}", "invalid_json"
        )
    model = check_model(body.get("model"))
    content = raw
    if any(key.startswith("x_") for key in body):
        content = _encoder.encode({k: v for k, v in body.items() if not k.startswith("x_")})
    hints = read_hints(body)
    return ApiRequest(model, body.get("stream") is True, body.get("x_priority"), content, hints)


# --- multipart ------------------------------------------------------------------------------------


def multipart_boundary(content_type: str) -> str | None:
    """The boundary of a ``multipart/form-data`` content type, or ``None`` for other types."""
    kind, options = multipart.parse_options_header(content_type)
    if kind.lower() != "multipart/form-data":
        return None
    boundary = options.get("boundary")
    if not boundary:
        raise bad_request("multipart/form-data without a boundary", "invalid_multipart")
    return boundary


class MultipartModelFinder:
    """Incrementally finds the ``model`` form field of a multipart body.

    :meth:`feed` each chunk as it arrives; it returns the model name once its value is complete,
    else ``None`` (give it more); a body that ends first gets :func:`no_model_field`. Only the
    parser's state is held, never file contents.
    """

    def __init__(self, boundary: str, field: str = "model") -> None:
        self._parser = multipart.PushMultipartParser(boundary, max_header_count=32)
        self._field = field
        self._in_field = False
        self._value = bytearray()

    def feed(self, chunk: bytes) -> str | None:
        if not chunk:
            return None
        try:
            for event in self._parser.parse(chunk):
                if isinstance(event, multipart.MultipartSegment):
                    self._in_field = event.name == self._field
                elif event is None:
                    if self._in_field:
                        return self._model()
                elif self._in_field:
                    self._value += event
                    if len(self._value) > MAX_MODEL_NAME:
                        raise _model_too_long()
        except multipart.MultipartError as exc:
            raise bad_request(f"malformed multipart body: {exc}", "invalid_multipart") from None
        return None

    def _model(self) -> str:
        try:
            text = self._value.decode()
        except UnicodeDecodeError:
            raise bad_request("`model` is not valid UTF-8", "invalid_model") from None
        return check_model(text.strip())
