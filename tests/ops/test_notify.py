"""Webhook notifications against real local HTTP servers."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from reconciler.ops.webhooks import Notifier, WebhookTarget, display_url, message_text


class Hook:
    """A webhook receiver: answers with ``statuses`` in turn (then 200), optionally slowly."""

    def __init__(self, statuses: list[int] | None = None, delay: float = 0.0) -> None:
        self.statuses = list(statuses or [])
        self.delay = delay
        self.received: queue.Queue[dict[str, Any]] = queue.Queue()
        self.attempts = 0
        self.release = threading.Event()  # ends a slow handler's wait at teardown
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.attempts += 1
                if hook.delay:
                    hook.release.wait(hook.delay)
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.received.put(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    async def get(self, timeout: float = 20) -> dict[str, Any]:
        return await asyncio.to_thread(self.received.get, True, timeout)

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks() -> Iterator[list[Hook]]:
    made: list[Hook] = []
    yield made
    for hook in made:
        hook.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"


def fast(targets: list[WebhookTarget], **kw: Any) -> Notifier:
    """Short backoff so retries happen within the test."""
    return Notifier(targets, node="box-1", backoff=0.01, backoff_max=0.05, **kw)


async def test_webhook_receives_json(hooks: list[Hook]) -> None:
    hook = Hook()
    hooks.append(hook)
    async with fast([WebhookTarget(hook.url)]) as notifier:
        assert notifier.notify("Failed", {"model": "qwen", "message": "start timed out"}) == 1
        body = await hook.get()
    assert body["event"] == "Failed" and body["node"] == "box-1"
    assert body["data"] == {"model": "qwen", "message": "start timed out"}
    assert body["text"] == "modelplane@box-1: Failed qwen: start timed out"
    assert body["time"].endswith("Z")
    assert notifier.stats()[hook.url].delivered == 1


async def test_events_are_filtered_per_target(hooks: list[Hook]) -> None:
    failures, everything = Hook(), Hook()
    hooks += [failures, everything]
    targets = [
        WebhookTarget(failures.url, frozenset({"Failed", "Unschedulable"})),
        WebhookTarget(everything.url),
    ]
    async with fast(targets) as notifier:
        assert notifier.notify("Applied", {"commit": "abc"}) == 1
        assert notifier.notify("Unschedulable", {"model": "big"}) == 2
        assert [(await everything.get())["event"] for _ in range(2)] == [
            "Applied",
            "Unschedulable",
        ]
        assert (await failures.get())["event"] == "Unschedulable"
    assert failures.received.empty()
    assert notifier.stats()[failures.url].delivered == 1


async def test_retries_after_500_then_succeeds(hooks: list[Hook]) -> None:
    hook = Hook(statuses=[500, 503, 429])
    hooks.append(hook)
    async with fast([WebhookTarget(hook.url)]) as notifier:
        notifier.notify("Recovered", {"model": "m"})
        assert (await hook.get())["event"] == "Recovered"
    assert hook.attempts == 4
    stats = notifier.stats()[hook.url]
    assert (stats.delivered, stats.failed) == (1, 0)


async def test_4xx_is_not_retried_and_the_next_message_goes_out(
    hooks: list[Hook], caplog: pytest.LogCaptureFixture
) -> None:
    hook = Hook(statuses=[404])
    hooks.append(hook)
    async with fast([WebhookTarget(hook.url)]) as notifier:
        notifier.notify("Failed", {"model": "a"})
        notifier.notify("Failed", {"model": "b"})
        assert (await hook.get())["data"] == {"model": "b"}
    assert hook.attempts == 2
    assert notifier.stats()[hook.url].failed == 1
    assert "HTTP 404" in caplog.text and "secret-token" not in caplog.text


async def test_closed_port_gives_up_after_retries_without_blocking(
    hooks: list[Hook], caplog: pytest.LogCaptureFixture
) -> None:
    down, up = closed_port_url(), Hook()
    hooks.append(up)
    notifier = fast([WebhookTarget(down), WebhookTarget(up.url)], attempts=3)
    assert notifier.notify("Failed", {"model": "x"}) == 2  # returns at once: nothing awaited
    assert (await up.get())["event"] == "Failed"  # the healthy target is not held up
    for _ in range(200):
        if notifier.stats()[down].failed:
            break
        await asyncio.sleep(0.05)
    assert notifier.stats()[down].failed == 1
    assert "ConnectError" in (notifier.stats()[down].last_error or "")
    await notifier.aclose()
    assert "not delivered" in caplog.text


async def test_slow_webhook_does_not_block_and_drops_oldest(
    hooks: list[Hook], caplog: pytest.LogCaptureFixture
) -> None:
    slow, healthy = Hook(delay=60), Hook()
    hooks += [slow, healthy]
    caplog.set_level(logging.WARNING)
    notifier = fast([WebhookTarget(slow.url), WebhookTarget(healthy.url)], max_queue=5)
    for i in range(30):  # a reconcile loop reporting, pass after pass, while the slow hook hangs
        assert notifier.notify("Applied", {"generation": i}) == 2
        assert (await healthy.get())["data"]["generation"] == i  # not held up by the slow one
    stats = notifier.stats()[slow.url]
    assert stats.dropped == 30 - 5 - 1  # 5 queued and one in flight were kept
    assert "is behind (5 queued): dropped the oldest message (16 dropped so far)" in caplog.text
    assert "(17 dropped so far)" not in caplog.text  # logged at powers of two only
    await notifier.aclose(timeout=0.5)  # gives up on the hung request, does not wait 60s
    assert "not delivered before shutdown" in caplog.text
    assert notifier.notify("Failed", {}) == 0  # closed: nothing queued, no error


def test_bad_targets_and_kinds() -> None:
    with pytest.raises(ValueError, match=r"unknown event kind\(s\) \['Failled'\]"):
        WebhookTarget("http://x/", frozenset({"Failled"}))
    notifier = Notifier([])
    with pytest.raises(ValueError, match="unknown event kind 'Deleted'"):
        notifier.notify("Deleted", {})
    asyncio.run(notifier.aclose())


def test_helpers() -> None:
    assert display_url("https://hooks.slack.com/services/T0/B0/XYZ") == "https://hooks.slack.com/…"
    assert display_url("http://127.0.0.1:9/h") == "http://127.0.0.1:9/…"
    assert message_text("Applied", {"commit": "abc"}, None) == "modelplane: Applied"
