"""Damage a real SQLite file the way a failing disk would, for the corrupt-database tests."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path


def damage_table(path: Path, table: str) -> None:
    """Overwrite ``table``'s root page with random bytes.

    The WAL is checkpointed into the file first (so the damaged page is the one read), and a
    row is committed through another connection afterwards, so that a connection holding the
    database open (a running ``modelplane run``) drops its cached pages and reads the damage.
    """
    with sqlite3.connect(path, timeout=30) as conn:
        for _ in range(100):  # a reader of an older snapshot keeps it busy for a moment
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                break
            time.sleep(0.1)
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        [root] = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)
        ).fetchone()
    with path.open("r+b") as handle:
        handle.seek((root - 1) * page_size)
        handle.write(os.urandom(page_size))
    with sqlite3.connect(path, timeout=30) as conn:
        conn.execute(
            "INSERT INTO activity (model, last_used) VALUES ('-damage-', 1)"
            " ON CONFLICT(model) DO UPDATE SET last_used = last_used + 1"
        )
