"""Moving an unusable state database aside, keeping what can still be read of it.

The runtimes are the truth about what runs, so a new database loses no model: the next
``modelplane run`` (or ``apply``) adopts every running backend. What only the database knew and
a pass needs — the last valid version of each manifest document (what keeps a model with a
broken manifest running), models loaded by hand, idle clocks — is copied over table by table, as
far as it can still be read. Events, generations and the request log start over.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import Store

KEPT_TABLES = ("documents", "overrides", "activity")
SIDE_FILES = ("", "-wal", "-shm")  # SQLite's WAL mode keeps the last commits beside the file


@dataclass
class Reset:
    moved_to: Path
    kept: dict[str, int] = field(default_factory=dict)  # table → rows copied
    lost: dict[str, str] = field(default_factory=dict)  # table → why it could not be read

    def summary(self) -> str:
        kept = ", ".join(f"{table} {rows}" for table, rows in self.kept.items()) or "nothing"
        text = f"moved to {self.moved_to}; kept: {kept}"
        if self.lost:
            text += "; unreadable: " + ", ".join(f"{t} ({why})" for t, why in self.lost.items())
        return text


async def reset_database(path: Path, now: float | None = None) -> Reset:
    """Move the database at ``path`` aside and start a new one holding what could be read.

    The caller makes sure no modelplane uses it (the state directory's lock).
    """
    moved_to = move_aside(path, now if now is not None else time.time())
    rows, lost = read_tables(moved_to, KEPT_TABLES)
    reset = Reset(moved_to, lost=lost)
    store = await Store.open(path)
    try:
        for table, (columns, values) in rows.items():
            reset.kept[table] = await _copy(store, table, columns, values)
        summary = reset.summary()
        await store.add_event("DatabaseReset", f"a new state database was started: {summary}")
    finally:
        await store.close()
    return reset


def move_aside(path: Path, now: float) -> Path:
    """Rename the database and its WAL files to ``<name>.corrupt-<time>`` (kept, never deleted)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    for suffix in SIDE_FILES:
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(f"{target}{suffix}")
    return target


def read_tables(
    path: Path, tables: tuple[str, ...]
) -> tuple[dict[str, tuple[list[str], list[tuple[Any, ...]]]], dict[str, str]]:
    """(table → (columns, rows)) for each table that reads whole, and (table → error) for the
    others. Opened read-only: the old file is evidence, not to be changed."""
    found: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    lost: dict[str, str] = {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return {}, dict.fromkeys(tables, str(exc))
    try:
        for table in tables:
            try:
                cursor = db.execute(f"SELECT * FROM {table}")
                values = cursor.fetchall()
            except sqlite3.Error as exc:
                lost[table] = str(exc)
                continue
            found[table] = ([d[0] for d in cursor.description], values)
    finally:
        db.close()
    return found, lost


async def _copy(store: Store, table: str, columns: list[str], values: list[tuple[Any, ...]]) -> int:
    """Insert the rows, keeping the columns the new schema still has."""
    async with store.db.execute(f"PRAGMA table_info({table})") as cursor:
        current = {row[1] for row in await cursor.fetchall()}
    keep = [i for i, name in enumerate(columns) if name in current]
    if not keep or not values:
        return 0
    names = ", ".join(columns[i] for i in keep)
    marks = ", ".join("?" * len(keep))
    await store.db.executemany(
        f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})",
        [tuple(row[i] for i in keep) for row in values],
    )
    return len(values)
