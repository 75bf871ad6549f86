"""Is a backend ready? Its Engine's ``healthPath`` answers 200.

Both runtimes use these two functions: :func:`wait_until_healthy` while a backend starts, and
:func:`answers_200` to check one they adopted. Backends listen on loopback, so the HTTP client
never takes a proxy from the environment (``trust_env=False``): an ``HTTP_PROXY`` meant for the
internet would otherwise receive, and fail, every health check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx

from .base import LaunchSpec, StartError

PROBE_TIMEOUT = 2.0  # seconds one health request may take
POLL_INTERVAL = 0.1  # seconds between health requests while a backend starts


def health_client() -> httpx.AsyncClient:
    """The client for health checks: a short timeout, and no proxy from the environment."""
    return httpx.AsyncClient(timeout=PROBE_TIMEOUT, trust_env=False)


async def answers_200(url: str, client: httpx.AsyncClient | None = None) -> bool:
    """True when ``url`` answers 200 now; a refused connection, a timeout or any other status
    is False."""
    if client is None:
        async with health_client() as own:
            return await answers_200(url, own)
    try:
        return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False


async def wait_until_healthy(
    spec: LaunchSpec,
    endpoint: Callable[[], Awaitable[str | None]],
    log_tail: Callable[[], Awaitable[str]],
    interval: float = POLL_INTERVAL,
) -> None:
    """Probe ``endpoint() + spec.health_path`` until it answers 200.

    ``endpoint`` says where the backend listens now (None while not known yet) and raises
    :class:`StartError` once the backend has exited, so a crash ends the wait at once. After
    ``spec.startup_timeout`` seconds :class:`StartError` says so, with the tail of the log.
    """
    deadline = time.monotonic() + spec.startup_timeout
    async with health_client() as client:
        while True:
            where = await endpoint()
            if where is not None and await answers_200(where + spec.health_path, client):
                return
            if time.monotonic() >= deadline:
                raise StartError(
                    f"{spec.model}: {spec.health_path} did not answer 200 within "
                    f"{spec.startup_timeout:g}s (startupTimeout)",
                    await log_tail(),
                )
            await asyncio.sleep(interval)
