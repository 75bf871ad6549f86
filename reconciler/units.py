"""Durations (``90s``, ``15m``, ``1h30m``, ``0``) and sizes (``512MiB``, ``6GiB``, ``24GB``).

Pure parsing and formatting, shared by the manifest schema, the planner and every message that
shows a number to a person.
"""

from __future__ import annotations

import re

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "PB": 10**15,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
    "PIB": 2**50,
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
    """``512 B``, ``1.5 KiB``, ``14.2 GiB``: binary units with one decimal."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
