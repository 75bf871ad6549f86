"""The state database (SQLite through aiosqlite, WAL): modelplane's memory of what happened.

The runtimes (labels, pid files) are the truth about what runs; this database remembers
generations, events, the last valid version of each manifest document, per-model activity and the
request log. The schema version lives in ``PRAGMA user_version``; each migration runs once, in a
transaction, so a crash mid-migration leaves the previous version intact.

A database that cannot be used (corrupt, not a database) is found at open (``PRAGMA
quick_check``) and raised as :class:`StateDatabaseError`, whose message says the way out
(``modelplane reset-db``, :mod:`.recovery`); the connection is closed first, so the process can
exit instead of waiting on aiosqlite's thread. Damage found later, by a method that reads or
writes a damaged page, is kept in ``Store.fault`` (``/readyz`` reports it).
"""

from __future__ import annotations

import functools
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from proxy.gateway import RequestRecord
from reconciler.manifests.manifest_set import Key, StoredDocument

# The request log's columns: the proxy's RequestRecord is written as it is, field by field.
REQUEST_COLUMNS: tuple[str, ...] = RequestRecord._fields
# A batch of rows as one JSON array of arrays: one statement, one step in SQLite.
_INSERT_REQUESTS = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(REQUEST_COLUMNS)))
    + " FROM json_each(?)"
)
_rows_encoder = msgspec.json.Encoder()

MIGRATIONS: list[str] = [
    # 1: the foundation
    """
    CREATE TABLE generations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        digest TEXT NOT NULL,
        git_commit TEXT,
        git_branch TEXT,
        git_dirty INTEGER,
        outcome TEXT NOT NULL,
        summary TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        model TEXT,
        kind TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX events_model ON events (model, id);
    CREATE TABLE documents (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        line INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    );
    CREATE TABLE activity (
        model TEXT PRIMARY KEY,
        last_used REAL,
        requests INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE model_state (
        model TEXT PRIMARY KEY,
        phase TEXT NOT NULL,
        reason TEXT,
        since REAL NOT NULL,
        retry_at REAL
    );
    CREATE TABLE requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        client TEXT,
        model TEXT,
        path TEXT,
        status INTEGER,
        latency REAL,
        ttft REAL,
        prompt_tokens INTEGER,
        completion_tokens INTEGER
    );
    """,
    # 2: weights — hub revisions resolved to commits, and per-file size, verification, GGUF header
    """
    CREATE TABLE weights_revisions (
        repo TEXT NOT NULL,
        revision TEXT NOT NULL,
        globs TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        resolution TEXT NOT NULL,
        resolved_at REAL NOT NULL,
        PRIMARY KEY (repo, revision, globs)
    );
    CREATE TABLE weights_files (
        repo TEXT NOT NULL,
        commit_sha TEXT NOT NULL,
        path TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT,
        fingerprint TEXT,
        verified_at REAL,
        gguf TEXT,
        PRIMARY KEY (repo, commit_sha, path)
    );
    """,
    # 3: manual overrides (POST /api/models/{name}/load), kept until the model's manifest changes
    """
    CREATE TABLE overrides (
        model TEXT PRIMARY KEY,
        action TEXT NOT NULL,
        manifest TEXT NOT NULL,
        time REAL NOT NULL
    );
    """,
]


class StateDatabaseError(sqlite3.DatabaseError):
    """The state database cannot be opened or used; ``str()`` says why and what to do."""

    def __init__(self, path: Path, problem: str, corrupt: bool) -> None:
        self.path = path
        self.problem = problem
        self.corrupt = corrupt
        if corrupt:
            advice = (
                f"move it aside and start a new one with `modelplane reset-db --state-dir "
                f"{path.parent}` (it keeps the old file beside it and what can still be read "
                "of it; running models keep running and are adopted again)"
            )
        else:
            advice = "check the state directory's permissions and free space"
        super().__init__(f"the state database {path} cannot be used: {problem}; {advice}")


def is_corruption(exc: BaseException) -> bool:
    """A damaged file (SQLITE_CORRUPT, SQLITE_NOTADB), not a busy or read-only database."""
    return getattr(exc, "sqlite_errorname", "") in ("SQLITE_CORRUPT", "SQLITE_NOTADB")


Method = TypeVar("Method", bound=Callable[..., Awaitable[Any]])


def _notes_corruption(method: Method) -> Method:
    """A store method that remembers, in ``store.fault``, finding the file damaged: a database
    corrupt in one table still opens and serves the others, and ``/readyz`` must say so."""

    @functools.wraps(method)
    async def noted(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return await method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if is_corruption(exc) and self.fault is None:
                self.fault = f"the state database {self.path} is corrupt ({exc})"
            raise

    return noted  # type: ignore[return-value]


@dataclass(frozen=True)
class Event:
    id: int
    time: float
    model: str | None
    kind: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "model": self.model,
            "kind": self.kind,
            "message": self.message,
        }


@dataclass(frozen=True)
class RequestRow:
    """One row of the request log, as ``/api/requests`` and ``modelplane requests`` show it."""

    id: int
    time: float
    client: str | None
    model: str | None
    path: str | None
    status: int | None
    latency: float | None
    ttft: float | None
    prompt_tokens: int | None
    completion_tokens: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": self.time,
            "client": self.client,
            "model": self.model,
            "path": self.path,
            "status": self.status,
            "latency": self.latency,
            "ttft": self.ttft,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
        }


@dataclass(frozen=True)
class ModelState:
    """A remembered phase (``Failed``, ``Unschedulable``) with its reason."""

    model: str
    phase: str
    reason: str | None
    since: float
    retry_at: float | None


@dataclass(frozen=True)
class Override:
    """A manual action in force: ``manifest`` is the digest of the model's manifest it ends with."""

    model: str
    action: str  # "load": kept loaded (like a pin) until unloaded or the manifest changes
    manifest: str
    time: float


@dataclass(frozen=True)
class Generation:
    id: int
    time: float
    digest: str
    git_commit: str | None
    git_branch: str | None
    git_dirty: bool | None
    outcome: str
    summary: Mapping[str, Any]


class Store:
    """One connection per process; every write is its own committed transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None
        self.listeners: list[Callable[[Event], None]] = []  # told of each new event
        self.fault: str | None = None  # set when a method found the file damaged

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (or create) the database, check it and bring its schema up to date.

        Raises :class:`StateDatabaseError` when it cannot be used.
        """
        store = cls(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        store._db = await aiosqlite.connect(path, isolation_level=None)
        try:
            store._db.row_factory = aiosqlite.Row
            await store._db.execute("PRAGMA busy_timeout=5000")
            await store._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a crash of modelplane loses nothing committed; only a power
            # loss may lose the last transactions, never corrupt the file.
            await store._db.execute("PRAGMA synchronous=NORMAL")
            await store._check()
            await store._migrate()
        except BaseException as exc:
            await store.close()
            if isinstance(exc, sqlite3.Error) and not isinstance(exc, StateDatabaseError):
                raise StateDatabaseError(path, str(exc), is_corruption(exc)) from None
            raise
        return store

    async def _check(self) -> None:
        """``PRAGMA quick_check``: every page readable and well-formed (indexes aside)."""
        async with self.db.execute("PRAGMA quick_check") as cur:
            problems = [str(row[0]) for row in await cur.fetchall()]
        if problems != ["ok"]:
            shown = "; ".join(problems[:3]) + (" …" if len(problems) > 3 else "")
            raise StateDatabaseError(self.path, f"it is corrupt ({shown})", corrupt=True)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is closed")
        return self._db

    async def _migrate(self) -> None:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = row[0] if row else 0
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            statements = [s.strip() for s in script.split(";") if s.strip()]
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for statement in statements:
                    await self.db.execute(statement)
                await self.db.execute(f"PRAGMA user_version={number}")
                await self.db.execute("COMMIT")
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise

    @_notes_corruption
    async def schema_version(self) -> int:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    # --- events -----------------------------------------------------------------------------

    @_notes_corruption
    async def add_event(self, kind: str, message: str, model: str | None = None) -> Event:
        now = time.time()
        cur = await self.db.execute(
            "INSERT INTO events (time, model, kind, message) VALUES (?, ?, ?, ?)",
            (now, model, kind, message),
        )
        event = Event(int(cur.lastrowid or 0), now, model, kind, message)
        for listener in self.listeners:
            listener(event)
        return event

    @_notes_corruption
    async def events(
        self, model: str | None = None, limit: int = 100, after_id: int = 0
    ) -> list[Event]:
        """The newest ``limit`` events (after ``after_id``), oldest first."""
        query = "SELECT id, time, model, kind, message FROM events WHERE id > ?"
        params: list[Any] = [after_id]
        if model:
            query += " AND model = ?"
            params.append(model)
        query += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        async with self.db.execute(query, params) as cur:
            rows = await cur.fetchall()
        return [Event(r[0], r[1], r[2], r[3], r[4]) for r in reversed(list(rows))]

    # --- generations ------------------------------------------------------------------------

    @_notes_corruption
    async def add_generation(
        self,
        digest: str,
        outcome: str,
        summary: Mapping[str, Any] | None = None,
        git_commit: str | None = None,
        git_branch: str | None = None,
        git_dirty: bool | None = None,
    ) -> int:
        cur = await self.db.execute(
            "INSERT INTO generations (time, digest, git_commit, git_branch, git_dirty, outcome,"
            " summary) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                time.time(),
                digest,
                git_commit,
                git_branch,
                None if git_dirty is None else int(git_dirty),
                outcome,
                json.dumps(summary or {}),
            ),
        )
        return int(cur.lastrowid or 0)

    @_notes_corruption
    async def generations(self, limit: int = 50) -> list[Generation]:
        async with self.db.execute(
            "SELECT id, time, digest, git_commit, git_branch, git_dirty, outcome, summary"
            " FROM generations ORDER BY id DESC LIMIT ?",
            (limit,),
        ) as cur:
            rows = await cur.fetchall()
        return [
            Generation(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                None if r[5] is None else bool(r[5]),
                r[6],
                json.loads(r[7]),
            )
            for r in rows
        ]

    @_notes_corruption
    async def last_generation(self) -> Generation | None:
        found = await self.generations(limit=1)
        return found[0] if found else None

    # --- last valid documents ----------------------------------------------------------------

    @_notes_corruption
    async def documents(self) -> dict[Key, StoredDocument]:
        async with self.db.execute("SELECT kind, name, path, line, body FROM documents") as cur:
            rows = await cur.fetchall()
        return {
            (r[0], r[1]): StoredDocument(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows
        }

    @_notes_corruption
    async def replace_documents(self, documents: Iterable[StoredDocument]) -> None:
        """Remember exactly the documents in force now (one transaction)."""
        rows = [(d.kind, d.name, d.path, d.line, json.dumps(d.body)) for d in documents]
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            await self.db.execute("DELETE FROM documents")
            await self.db.executemany(
                "INSERT INTO documents (kind, name, path, line, body) VALUES (?, ?, ?, ?, ?)", rows
            )
            await self.db.execute("COMMIT")
        except BaseException:
            await self.db.execute("ROLLBACK")
            raise

    @_notes_corruption
    async def update_generation(
        self, generation_id: int, outcome: str, summary: Mapping[str, Any] | None = None
    ) -> None:
        """Set the outcome; ``summary`` keys are merged into what the generation recorded."""
        async with self.db.execute(
            "SELECT summary FROM generations WHERE id = ?", (generation_id,)
        ) as cur:
            row = await cur.fetchone()
        merged = {**(json.loads(row[0]) if row else {}), **(summary or {})}
        await self.db.execute(
            "UPDATE generations SET outcome = ?, summary = ? WHERE id = ?",
            (outcome, json.dumps(merged), generation_id),
        )

    # --- per-model state that outlives a process (failures) -----------------------------------

    @_notes_corruption
    async def set_model_state(
        self, model: str, phase: str, reason: str | None = None, retry_at: float | None = None
    ) -> None:
        await self.db.execute(
            "INSERT INTO model_state (model, phase, reason, since, retry_at) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(model) DO UPDATE SET phase = excluded.phase, reason = excluded.reason,"
            " since = excluded.since, retry_at = excluded.retry_at",
            (model, phase, reason, time.time(), retry_at),
        )

    @_notes_corruption
    async def clear_model_state(self, model: str) -> None:
        await self.db.execute("DELETE FROM model_state WHERE model = ?", (model,))

    @_notes_corruption
    async def model_states(self) -> dict[str, ModelState]:
        async with self.db.execute(
            "SELECT model, phase, reason, since, retry_at FROM model_state"
        ) as cur:
            rows = await cur.fetchall()
        return {r[0]: ModelState(r[0], r[1], r[2], r[3], r[4]) for r in rows}

    # --- manual overrides ----------------------------------------------------------------------

    @_notes_corruption
    async def set_override(self, model: str, action: str, manifest: str) -> Override:
        override = Override(model, action, manifest, time.time())
        await self.db.execute(
            "INSERT INTO overrides (model, action, manifest, time) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(model) DO UPDATE SET action = excluded.action,"
            " manifest = excluded.manifest, time = excluded.time",
            (model, action, manifest, override.time),
        )
        return override

    @_notes_corruption
    async def clear_override(self, model: str) -> None:
        await self.db.execute("DELETE FROM overrides WHERE model = ?", (model,))

    @_notes_corruption
    async def overrides(self) -> dict[str, Override]:
        async with self.db.execute("SELECT model, action, manifest, time FROM overrides") as cur:
            rows = await cur.fetchall()
        return {r[0]: Override(r[0], r[1], r[2], r[3]) for r in rows}

    # --- activity and requests ---------------------------------------------------------------

    @_notes_corruption
    async def set_last_used(self, used: Mapping[str, float]) -> None:
        """Record idle clocks (batched by the service) so a restart continues them."""
        await self.db.executemany(
            "INSERT INTO activity (model, last_used) VALUES (?, ?)"
            " ON CONFLICT(model) DO UPDATE SET last_used = excluded.last_used",
            list(used.items()),
        )

    @_notes_corruption
    async def touch(self, model: str, when: float | None = None) -> None:
        await self.db.execute(
            "INSERT INTO activity (model, last_used, requests) VALUES (?, ?, 1)"
            " ON CONFLICT(model) DO UPDATE SET last_used = excluded.last_used,"
            " requests = requests + 1",
            (model, when or time.time()),
        )

    @_notes_corruption
    async def last_used(self) -> dict[str, float]:
        async with self.db.execute("SELECT model, last_used FROM activity") as cur:
            rows = await cur.fetchall()
        return {r[0]: r[1] for r in rows if r[1] is not None}

    @_notes_corruption
    async def add_request_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Rows as tuples in :data:`REQUEST_COLUMNS` order (``proxy.gateway.RequestRecord``
        is one), thousands a second under load.

        They go to SQLite as one JSON array in one statement (one transaction): SQLite inserts
        them all in a single step, during which the writer thread does not hold the GIL. With
        ``executemany`` it took the GIL back for every row, and each time the event loop serving
        requests had to hand it over: that cost the proxy a sixth of its throughput."""
        if rows:
            await self.db.execute(_INSERT_REQUESTS, (_rows_encoder.encode(rows),))

    @_notes_corruption
    async def requests(
        self,
        *,
        model: str | None = None,
        client: str | None = None,
        status: int | None = None,
        limit: int = 100,
    ) -> list[RequestRow]:
        """The newest ``limit`` rows of the request log matching the filters, newest first.
        ``status`` below 10 matches a class (``4`` is every 4xx)."""
        query = (
            "SELECT id, time, client, model, path, status, latency, ttft, prompt_tokens,"
            " completion_tokens FROM requests WHERE 1=1"
        )
        params: list[Any] = []
        if model:
            query += " AND model = ?"
            params.append(model)
        if client:
            query += " AND client = ?"
            params.append(client)
        if status is not None and status < 10:
            query += " AND status >= ? AND status < ?"
            params += [status * 100, status * 100 + 100]
        elif status is not None:
            query += " AND status = ?"
            params.append(status)
        query += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        async with self.db.execute(query, params) as cur:
            rows = await cur.fetchall()
        return [RequestRow(*r) for r in rows]

    @_notes_corruption
    async def request_count(self, model: str | None = None) -> int:
        query, params = "SELECT COUNT(*) FROM requests", []
        if model:
            query += " WHERE model = ?"
            params.append(model)
        async with self.db.execute(query, params) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0
