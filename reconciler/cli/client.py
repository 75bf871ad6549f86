"""The command line as a client of the running ``modelplane run`` (its admin API), as ``docker``
is of its daemon: what it prints is what the service sees, from the same snapshot."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from reconciler.state import run_record
from reconciler.state.run_record import RunRecord


class ServiceError(Exception):
    """The service answered with an error (the message is its own)."""


class ServiceClient:
    def __init__(self, record: RunRecord, token: str | None, timeout: float = 30.0) -> None:
        self.record = record
        headers = {"authorization": f"Bearer {token}"} if token else {}
        # trust_env=False: a proxy in the environment must never intercept loopback calls
        self.http = httpx.Client(
            base_url=record.url, headers=headers, timeout=timeout, trust_env=False
        )

    @classmethod
    def find(cls, state_dir: Path) -> ServiceClient | None:
        """A client of the ``run`` on ``state_dir`` if one is up and answers, else None."""
        record = run_record.read(state_dir)
        if record is None:
            return None
        token = os.environ.get("MODELPLANE_API_KEY") or run_record.admin_token(state_dir)
        client = cls(record, token)
        try:
            client.http.get("/healthz", timeout=3.0).raise_for_status()
        except httpx.HTTPError:
            client.close()
            return None
        return client

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise ServiceError(_error_text(response))
        return response

    def status(self) -> dict[str, Any]:
        return self._call("GET", "/api/status").json()

    def events(self, model: str | None, limit: int) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": limit, **({"model": model} if model else {})}
        return self._call("GET", "/api/events", params=params).json()

    def follow_events(self, model: str | None, limit: int) -> Iterator[dict[str, Any]]:
        """The last ``limit`` events, then each new one as it happens (SSE)."""
        params: dict[str, Any] = {
            "limit": limit,
            "follow": 1,
            **({"model": model} if model else {}),
        }
        with self.http.stream("GET", "/api/events", params=params, timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                raise ServiceError(_error_text(response))
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[6:])

    def history(self, limit: int) -> list[dict[str, Any]]:
        return self._call("GET", "/api/history", params={"limit": limit}).json()

    def logs(self, model: str, lines: int) -> str:
        return self._call("GET", f"/api/models/{model}/logs", params={"lines": lines}).text

    def load(self, model: str) -> dict[str, Any]:
        return self._call("POST", f"/api/models/{model}/load", timeout=None).json()

    def unload(self, model: str) -> dict[str, Any]:
        return self._call("POST", f"/api/models/{model}/unload", timeout=None).json()

    def down(self) -> dict[str, Any]:
        return self._call("POST", "/api/down", timeout=None).json()


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        message = error.get("message") if isinstance(error, dict) else None
    except ValueError:
        message = None
    return f"HTTP {response.status_code}: {message or response.text.strip()[:500]}"
