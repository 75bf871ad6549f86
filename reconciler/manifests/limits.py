"""What one manifest file may cost to read.

A manifest is a few hundred bytes holding a few dozen values. These bounds turn a hostile or
broken file — 50 MB of YAML, an alias bomb (524 bytes that expand to millions of values), a
300-level nesting that overflows the stack — into an ordinary ``file:line:col`` error for that
file or document, instead of a loader that stalls, balloons in memory or raises
``RecursionError``. README "Reliability" lists them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.units import format_size, parse_size

MAX_FILE_SIZE_ENV = "MODELPLANE_MAX_MANIFEST_SIZE"


@dataclass(frozen=True)
class Limits:
    """``file_bytes``: size of one file (``MODELPLANE_MAX_MANIFEST_SIZE``, default 1 MiB);
    ``depth``: nesting of one document (a Model needs about 8); ``values``: scalars, lists and
    mappings in one document once its aliases are expanded (a Model has about 30)."""

    file_bytes: int = 2**20
    depth: int = 64
    values: int = 10_000

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Limits:
        """The defaults, with the file size from the environment. Raises ``ValueError`` with
        the variable's name when its value is not a size."""
        value = environ.get(MAX_FILE_SIZE_ENV, "").strip()
        if not value:
            return cls()
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise ValueError(f"{MAX_FILE_SIZE_ENV}={value!r}: {exc}") from None
        return cls(file_bytes=size)

    def file_too_large(self, size: int) -> str:
        return (
            f"file is {format_size(size)}, more than the {format_size(self.file_bytes)} a "
            f"manifest file may hold (raise it with {MAX_FILE_SIZE_ENV})"
        )
