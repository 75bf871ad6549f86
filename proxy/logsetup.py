"""Logging for ``modelplane run``: plain text or JSON lines on stderr, one switch.

``setup_logging("json")`` makes every record one JSON object per line, with the record's
``extra=`` fields as keys (the access log puts model, status, latency… there), so log shippers
need no parsing rules. Uvicorn's loggers propagate to the same handler when the CLI starts
uvicorn with ``log_config=None``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any, Literal

LogFormat = Literal["text", "json"]
ACCESS = logging.getLogger("modelplane.access")
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_SKIP = _STANDARD | {"color_message"}  # uvicorn's copy of the message with ANSI colour codes


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", **extra}`` per line; exceptions as ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _SKIP and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(
    fmt: LogFormat = "text", level: int | str = "INFO", stream: IO[str] | None = None
) -> logging.Handler:
    """Configure the root logger (replacing its handlers); returns the handler installed."""
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r}: expected 'text' or 'json'")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Our access log replaces uvicorn's (which knows neither model nor tokens).
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per health probe otherwise
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # huggingface_hub's: one per hub call
    return handler


def access_log(
    client: str,
    method: str,
    path: str,
    model: str,
    status: int,
    latency: float,
    ttft: float | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
) -> None:
    """One line per proxied request (``modelplane.access``, level INFO)."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    tokens = (
        f" tokens={prompt_tokens or 0}+{completion_tokens or 0}"
        if prompt_tokens is not None or completion_tokens is not None
        else ""
    )
    first = f" ttft={ttft * 1000:.1f}ms" if ttft is not None else ""
    ACCESS.info(
        '%s "%s %s" %s model=%s %.1fms%s%s',
        client,
        method,
        path,
        status,
        model or "-",
        latency * 1000,
        first,
        tokens,
        extra={
            "client": client,
            "method": method,
            "path": path,
            "model": model,
            "status": status,
            "latency_ms": round(latency * 1000, 3),
            "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
        },
    )
