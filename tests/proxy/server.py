"""Serve an app with uvicorn on a loopback port picked by the OS, in a thread of this process
(so tests can inspect the gateway object the app uses)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import uvicorn
from litestar import Litestar

from proxy import http_protocol

T = TypeVar("T")


class ProxyServer:
    def __init__(
        self, build: Callable[[list], Litestar], native: bool = True, keep_alive: int = 30
    ) -> None:
        """``build(lifespan)`` makes the app; the lifespan hook records the server's loop.
        ``native``: the proxy's own HTTP protocol (as ``modelplane run`` serves it); else
        uvicorn's, with the app's ASGI routes."""
        self.loop: asyncio.AbstractEventLoop | None = None

        @asynccontextmanager
        async def capture_loop(_: Litestar) -> AsyncIterator[None]:
            self.loop = asyncio.get_running_loop()
            yield

        self.app = build([capture_loop])
        # IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted connections only when the listening
        # socket names its protocol (without it, Nagle + delayed ACK stall replies ~40 ms).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_keep_alive=keep_alive,
            http=http_protocol(self.app) if native else "auto",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> ProxyServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("proxy server did not start")
            time.sleep(0.01)
        return self

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the server's loop and return its result (thread-safe)."""
        assert self.loop is not None

        async def run() -> T:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def handlers_running(self) -> int:
        """Request handler tasks not finished yet (uvicorn waits for them when it stops)."""
        return len(self._server.server_state.tasks)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)
        self._sock.close()
