"""A model's backend log, live (``modelplane logs -f``, ``/api/models/{m}/logs?follow=1``).

A process backend's log is a file: it is followed by offset (a restart that truncates it starts
over). Other runtimes (docker) only offer a tail: it is read again every ``poll`` seconds and
what was not seen yet is passed on (:func:`new_lines`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from .base import Runtime
from .process import ProcessRuntime, tail

WINDOW = 200  # lines of the tail compared between two polls (runtimes without a file)


def new_lines(seen: Sequence[str], current: Sequence[str]) -> list[str]:
    """The lines of ``current`` after the longest end of ``seen`` that it starts with (pure).

    A tail that moved on by a few lines overlaps the last one; one with no overlap at all is
    all new (the backend wrote more than the window between two polls, or restarted)."""
    for size in range(min(len(seen), len(current)), 0, -1):
        if list(seen[-size:]) == list(current[:size]):
            return list(current[size:])
    return list(current)


async def follow_logs(
    runtime: Runtime,
    model: str,
    lines: int = 50,
    poll: float = 0.5,
    until: Callable[[], bool] = lambda: False,
) -> AsyncIterator[str]:
    """The last ``lines`` lines of ``model``'s log, then each new line as it is written, until
    ``until()`` says to end (the service shutting down)."""
    if isinstance(runtime, ProcessRuntime):
        async for line in _follow_file(runtime.log_path(model), lines, poll, until):
            yield line
        return
    seen = (await runtime.logs(model, WINDOW)).splitlines()
    for line in seen[-lines:] if lines else []:
        yield line
    while not until():
        await asyncio.sleep(poll)
        current = (await runtime.logs(model, WINDOW)).splitlines()
        for line in new_lines(seen, current):
            yield line
        seen = current


async def _follow_file(
    path: Path, lines: int, poll: float, until: Callable[[], bool]
) -> AsyncIterator[str]:
    first = tail(path, lines) if lines else ""
    for line in first.splitlines():
        yield line
    offset = _size(path)
    partial = b""
    while not until():
        await asyncio.sleep(poll)
        size = _size(path)
        if size < offset:  # truncated or replaced: read it from the start
            offset, partial = 0, b""
        if size == offset:
            continue
        with path.open("rb") as fh:
            fh.seek(offset)
            data = fh.read(size - offset)
        offset += len(data)
        *complete, partial = (partial + data).split(b"\n")
        for raw in complete:
            yield raw.decode("utf-8", errors="replace")


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
