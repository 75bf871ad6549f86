"""Model Boss's per-request fields, read from a JSON body's ``x_*`` fields (stripped before the
body is forwarded, as ``x_priority`` is):

- ``x_client_id``: who is asking; the request log keeps it instead of the client's address;
- ``x_stay_warm``: keep this model loaded that long after the request (seconds, or ``"10m"``),
  capped by the gateway (``Node.proxy.maxStayWarm``);
- ``x_cooldown``: this client's requests are spaced at least that long (seconds, or ``"2s"``);
  one that comes sooner gets 429 with ``Retry-After`` (see :mod:`proxy.cooldown`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.errors import bad_request

MAX_CLIENT_ID = 128
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True, slots=True)
class ClientHints:
    client_id: str | None = None
    stay_warm: float | None = None  # seconds
    cooldown: float | None = None  # seconds


NONE = ClientHints()


def read_hints(body: Mapping[str, object]) -> ClientHints:
    """The hints of a decoded JSON body; a malformed one is a 400 naming the field."""
    if not any(key in body for key in ("x_client_id", "x_stay_warm", "x_cooldown")):
        return NONE
    client = body.get("x_client_id")
    if client is not None and (
        not isinstance(client, str) or not client.strip() or len(client) > MAX_CLIENT_ID
    ):
        raise bad_request(
            f"`x_client_id` must be a non-empty string of at most {MAX_CLIENT_ID} characters",
            "invalid_client_id",
            param="x_client_id",
        )
    return ClientHints(
        client.strip() if isinstance(client, str) else None,
        _duration(body.get("x_stay_warm"), "x_stay_warm"),
        _duration(body.get("x_cooldown"), "x_cooldown"),
    )


def _duration(value: object, field: str) -> float | None:
    """Seconds from a number or a string such as ``"90s"``, ``"10m"``, ``"1h"``."""
    if value is None:
        return None
    if isinstance(value, bool):
        seconds = None
    elif isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    else:
        seconds = None
    if seconds is None or seconds < 0:
        raise bad_request(
            f"`{field}` must be a duration: seconds, or a string like 90s, 10m, 1h",
            f"invalid_{field.removeprefix('x_')}",
            param=field,
        )
    return seconds
