"""Fixtures: a proxy app served by uvicorn on a loopback port, in front of fake backends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest

from proxy import ProxySettings, create_app
from proxy.gateway import ApiKey
from tests.helpers.backend import FakeBackend
from tests.proxy.fakegateway import FakeGateway, FakeModel
from tests.proxy.server import ProxyServer


@dataclass
class Proxy:
    server: ProxyServer
    gateway: FakeGateway

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, api_key: str = "unused", **kwargs: object) -> openai.OpenAI:
        """The official client; no retries, so every status reaches the test."""
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=30, **kwargs
        )

    def async_client(self, api_key: str = "unused") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60
        )

    def http(self, timeout: float = 30, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, **kwargs)

    def backend(self, model: str) -> FakeBackend:
        return self.gateway.backends[model]


MakeProxy = Callable[..., Proxy]


@pytest.fixture
def make_proxy() -> Iterator[MakeProxy]:
    """``make_proxy(models, settings=None, keys=None, native=True)``: a fresh proxy; stopped
    (with its backends) when the test ends. ``native=False`` serves it with uvicorn's own
    protocol (the app's ASGI routes) instead of the proxy's."""
    made: list[Proxy] = []

    def make(
        models: list[FakeModel],
        settings: ProxySettings | None = None,
        keys: list[ApiKey] | None = None,
        native: bool = True,
    ) -> Proxy:
        gateway = FakeGateway(models, keys)
        server = ProxyServer(
            lambda lifespan: create_app(gateway, settings, lifespan=lifespan), native=native
        )
        proxy = Proxy(server.start(), gateway)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.server.stop()
        proxy.gateway.close()


@pytest.fixture(scope="module")
def shared() -> Iterator[Proxy]:
    """One proxy for read-mostly tests: `alpha` (alias `gpt-4o-mini`) and `beta`."""
    gateway = FakeGateway(
        [
            FakeModel("alpha", aliases=("gpt-4o-mini",)),
            FakeModel("beta", backend_args=("--tokens", "4")),
        ]
    )
    server = ProxyServer(lambda lifespan: create_app(gateway, lifespan=lifespan)).start()
    yield Proxy(server, gateway)
    server.stop()
    gateway.close()


@pytest.fixture(autouse=True)
def no_internal_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No test may make the proxy log an error (an internal error is a bug, whatever the
    status the client saw)."""
    yield
    errors = [
        r.getMessage()
        for r in caplog.get_records("call")
        if r.levelname in ("ERROR", "CRITICAL")
        and r.name.startswith(("modelplane", "uvicorn", "asyncio"))
    ]
    assert errors == []
