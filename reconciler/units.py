"""Durations (``90s``, ``15m``, ``1h30m``, ``0``), sizes (``512MiB``, ``6GiB``, ``24GB``) and
listen addresses (``127.0.0.1:8400``, ``[::1]:8400``, ``:8400``).

Pure parsing and formatting, shared by the manifest schema, the planner, the commands that bind a
socket and every message that shows a number to a person.
"""

from __future__ import annotations

import ipaddress
import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

_HOSTNAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")
#: What an empty host means (``:8400``): every interface, as in Go, docker -p and Prometheus.
ALL_INTERFACES = "0.0.0.0"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B|B)?\s*$", re.IGNORECASE)
KiB, MiB, GiB, TiB, PiB = 2**10, 2**20, 2**30, 2**40, 2**50
_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "PB": 10**15,
    "KIB": KiB,
    "MIB": MiB,
    "GIB": GiB,
    "TIB": TiB,
    "PIB": PiB,
}


def parse_duration(value: object) -> float:
    """Seconds from ``90s``, ``15m``, ``2h``, ``1h30m``, ``250ms`` or a plain number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative: {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"not a duration: {value!r}")
    text = value.strip()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(
            f"not a duration: {value!r} (use a number with a unit: 90s, 15m, 2h, 1h30m, or 0)"
        )
    return total


def parse_size(value: object) -> int:
    """Bytes from ``512MiB``, ``6GiB``, ``24GB``, ``1.5GiB`` or a plain number of bytes."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative: {value!r}")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            unit = (match.group(2) or "B").upper()
            return int(float(match.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"not a size: {value!r} (use a number with a unit: 512MiB, 6GiB, 24GB)")


def format_duration(seconds: float) -> str:
    """``0s``, ``45s``, ``15m``, ``1h30m``, ``2d3h``: short and exact to the second."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts[:2])


def format_size(size: float) -> str:
    """``512 B``, ``1.5 KiB``, ``14.2 GiB``: binary units with one decimal, for every size a
    person reads (disk, downloads, VRAM, image pulls)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def parse_listen(listen: str) -> tuple[str, int]:
    """(host, port) from ``HOST:PORT``: ``127.0.0.1:8400``, ``localhost:8400``, ``[::1]:8400``,
    or ``:8400`` (every interface); port 0 lets the system pick one. The host comes back without
    brackets; ValueError says what is wrong, in words a manifest error can show."""
    example = "HOST:PORT, e.g. 127.0.0.1:8400, [::1]:8400 or :8400"
    host, sep, port = listen.strip().rpartition(":")
    if not sep:
        raise ValueError(f"listen address {listen!r} is not {example}")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"listen address {listen!r}: the port must be a number from 0 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not _is_ip(host, version=6):
            raise ValueError(f"listen address {listen!r}: {host!r} is not an IPv6 address")
    elif ":" in host:
        raise ValueError(
            f"listen address {listen!r}: write an IPv6 address in brackets, [::1]:8400"
        )
    elif host and not (_is_ip(host) or _HOSTNAME.match(host)):
        raise ValueError(f"listen address {listen!r}: {host!r} is not an IP address or host name")
    return host or ALL_INTERFACES, int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.1``, ``::1``): reachable from
    this machine only, so serving there without keys or tokens is safe."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(text: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version
