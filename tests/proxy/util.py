"""Small helpers for the proxy tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from tests.proxy.fakegateway import FakeGateway


def wait_until(condition: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
    """Poll ``condition`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def assert_balanced(gateway: FakeGateway, timeout: float = 10.0) -> None:
    """Every begin_request got its end_request (server-side cleanup may lag the client)."""
    wait_until(
        lambda: not any(gateway.in_flight.values()),
        timeout,
        f"in-flight to return to 0: {dict(gateway.in_flight)}",
    )
    assert gateway.unbalanced == []
    assert gateway.begun == gateway.ended


def chat_body(model: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def sse_lines(response: httpx.Response) -> Iterator[str]:
    """Non-empty lines of an SSE reply, as they arrive (comments included)."""
    for line in response.iter_lines():
        if line:
            yield line


def data_events(lines: list[str]) -> list[Any]:
    """The decoded ``data:`` payloads (``[DONE]`` kept as the string)."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            payload = line.removeprefix("data: ")
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out
