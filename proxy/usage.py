"""Token counts from a reply without parsing (or slowing) the reply.

OpenAI replies carry ``"usage": {"prompt_tokens", "completion_tokens", ...}``: near the end of a
non-streamed JSON reply, and in the last chunk of a stream (``stream_options.include_usage``;
earlier chunks say ``"usage": null``). The proxy keeps only the tail of a stream
(:class:`Tail`) and looks for the last ``"usage"`` object in it once the reply is over.
"""

from __future__ import annotations

import json
from collections import deque
from typing import NamedTuple

import msgspec

_KEY = b'"usage"'
_decoder = json.JSONDecoder()
_flat_decoder = msgspec.json.Decoder()
TAIL_BYTES = 8192


class Usage(NamedTuple):
    prompt_tokens: int | None
    completion_tokens: int | None


def find_usage(data: bytes) -> Usage | None:
    """The last ``"usage": {...}`` object in ``data`` (a JSON reply or SSE events), if any."""
    end = len(data)
    while (pos := data.rfind(_KEY, 0, end)) != -1:
        end = pos
        if pos and data[pos - 1 : pos] == b"\\":
            continue  # inside a string: \"usage\"
        usage = _flat_object_after(data, pos + len(_KEY))
        if usage is None:
            usage = _object_after(data, pos + len(_KEY))
        if usage is not None:
            return Usage(_int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens")))
    return None


def _flat_object_after(data: bytes, start: int) -> dict | None:
    """The usual case, quickly: ``: {...}`` with no object nested inside."""
    brace = data.find(b"{", start, start + 64)
    if brace == -1 or data[start:brace].strip() != b":":
        return None
    close = data.find(b"}", brace)
    if close == -1 or data.find(b"{", brace + 1, close) != -1:
        return None
    try:
        value = _flat_decoder.decode(data[brace : close + 1])
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def _object_after(data: bytes, start: int) -> dict | None:
    text = data[start : start + 4096].decode("utf-8", "replace").lstrip()
    if not text.startswith(":"):
        return None
    text = text[1:].lstrip()
    if not text.startswith("{"):
        return None  # null, or cut off
    try:
        value, _ = _decoder.raw_decode(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Tail:
    """The last ~``limit`` bytes of a stream, kept as chunk references (no copying per chunk)."""

    __slots__ = ("_chunks", "_limit", "_size")

    def __init__(self, limit: int = TAIL_BYTES) -> None:
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._limit = limit

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= self._limit:
            self._size -= len(self._chunks.popleft())

    def bytes(self) -> bytes:
        return b"".join(self._chunks)

    def event_end(self) -> bytes:
        """What ends the stream's last server-sent event if it stopped in the middle of one
        (a backend that died mid-write): an event after it must not be glued to its half."""
        end = self.bytes()[-4:]
        if not end or end.endswith((b"\n\n", b"\r\n\r\n")):
            return b""
        return b"\n" if end.endswith(b"\n") else b"\n\n"
