"""The one health check both runtimes use: 200 or not, never through an environment proxy."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reconciler.runtimes.base import LaunchSpec, StartError
from reconciler.runtimes.health import answers_200, wait_until_healthy


class _Server:
    """A loopback HTTP server answering ``status`` to every GET, counting requests."""

    def __init__(self, status: int) -> None:
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def healthy() -> Iterator[_Server]:
    server = _Server(200)
    yield server
    server.close()


@pytest.fixture
def sick() -> Iterator[_Server]:
    server = _Server(503)
    yield server
    server.close()


def spec(startup_timeout: float = 5.0) -> LaunchSpec:
    return LaunchSpec(
        model="m",
        spec_hash="h",
        spec={},
        command=("true",),
        env={},
        gpus=None,
        health_path="/health",
        startup_timeout=startup_timeout,
    )


async def test_200_is_healthy_anything_else_is_not(healthy: _Server, sick: _Server) -> None:
    assert await answers_200(healthy.url + "/health")
    assert not await answers_200(sick.url + "/health")
    sick.close()  # nothing listens there any more: refused, not an exception
    assert not await answers_200(sick.url + "/health")


async def test_a_proxy_in_the_environment_never_sees_a_health_check(
    healthy: _Server, sick: _Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, sick.url)  # a "proxy" that would answer 503
    assert await answers_200(healthy.url + "/health")
    await wait_until_healthy(spec(), _fixed(healthy.url), _no_log)
    assert sick.requests == [] and healthy.requests == ["/health", "/health"]


async def test_wait_until_healthy_waits_for_the_endpoint_and_for_200(healthy: _Server) -> None:
    calls: list[float] = []

    async def endpoint() -> str | None:
        calls.append(time.monotonic())
        return None if len(calls) < 3 else healthy.url  # where it listens is known later

    await wait_until_healthy(spec(), endpoint, _no_log, interval=0.01)
    assert len(calls) == 3 and healthy.requests == ["/health"]


async def test_an_exit_ends_the_wait_at_once() -> None:
    async def exited() -> str | None:
        raise StartError("m: backend exited with code 3 before becoming ready", "the log")

    started = time.monotonic()
    with pytest.raises(StartError, match="exited with code 3") as caught:
        await wait_until_healthy(spec(startup_timeout=30), exited, _no_log)
    assert time.monotonic() - started < 5 and caught.value.log_tail == "the log"


async def test_the_startup_timeout_is_a_start_error_with_the_log(sick: _Server) -> None:
    async def log_tail() -> str:
        return "loading weights..."

    with pytest.raises(StartError) as caught:
        await wait_until_healthy(spec(startup_timeout=0.3), _fixed(sick.url), log_tail)
    assert caught.value.message == "m: /health did not answer 200 within 0.3s (startupTimeout)"
    assert caught.value.log_tail == "loading weights..."
    assert len(sick.requests) >= 2  # it kept asking until the deadline


def _fixed(url: str) -> Callable[[], Awaitable[str]]:
    """An ``endpoint`` that always answers ``url``."""

    async def endpoint() -> str:
        return url

    return endpoint


async def _no_log() -> str:
    return ""
