"""The state database on real SQLite files: migrations, WAL, round trips, crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from proxy.gateway import RequestRecord
from reconciler.manifests.manifest_set import StoredDocument
from reconciler.state import store as store_module
from reconciler.state.store import MIGRATIONS, Store
from tests.helpers.database import damage_table

from .conftest import REPO


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "state" / "modelplane.db")
    yield opened
    await opened.close()


def sql(path: Path, query: str) -> list[tuple]:
    """A query through a separate, plain sqlite3 connection (what another process sees)."""
    with sqlite3.connect(path) as conn:
        return conn.execute(query).fetchall()


async def test_migrations_set_user_version_and_run_once(tmp_path: Path) -> None:
    path = tmp_path / "new" / "modelplane.db"
    async with await Store.open(path) as first:
        assert await first.schema_version() == len(MIGRATIONS)
        await first.add_event("Note", "kept")
    assert sql(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    async with await Store.open(path) as second:  # reopening must not re-run (or wipe) anything
        assert [e.message for e in await second.events()] == ["kept"]


async def test_a_new_migration_upgrades_an_old_database_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "modelplane.db"
    async with await Store.open(path) as old:
        await old.add_event("Note", "from v1")
    upgraded = [*MIGRATIONS, "ALTER TABLE events ADD COLUMN extra TEXT; CREATE TABLE t2 (x)"]
    monkeypatch.setattr(store_module, "MIGRATIONS", upgraded)
    async with await Store.open(path) as new:
        assert await new.schema_version() == len(upgraded)
        assert [e.message for e in await new.events()] == ["from v1"]
    assert "extra" in [row[1] for row in sql(path, "PRAGMA table_info(events)")]


async def test_a_failing_migration_leaves_the_previous_version_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "modelplane.db"
    async with await Store.open(path) as old:
        await old.add_event("Note", "before")
    broken = [*MIGRATIONS, "CREATE TABLE half (x); THIS IS NOT SQL"]
    monkeypatch.setattr(store_module, "MIGRATIONS", broken)
    with pytest.raises(Exception, match="syntax error"):
        await Store.open(path)
    assert sql(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    assert sql(path, "SELECT name FROM sqlite_master WHERE name = 'half'") == []
    assert sql(path, "SELECT message FROM events") == [("before",)]


async def test_the_database_is_in_wal_mode(store: Store) -> None:
    assert sql(store.path, "PRAGMA journal_mode") == [("wal",)]


async def test_events_round_trip_filter_and_page(store: Store) -> None:
    ids = [
        (await store.add_event("Started", f"message {i}", model="a" if i % 2 else "b")).id
        for i in range(6)
    ]
    await store.add_event("Invalid", "no model")
    everything = await store.events()
    assert [e.message for e in everything] == [*(f"message {i}" for i in range(6)), "no model"]
    assert everything[-1].model is None and everything[0].kind == "Started"
    assert [e.message for e in await store.events(model="a")] == [
        "message 1",
        "message 3",
        "message 5",
    ]
    assert [e.message for e in await store.events(limit=2)] == ["message 5", "no model"]
    assert [e.id for e in await store.events(after_id=ids[3])] == [ids[4], ids[5], ids[5] + 1]
    assert everything[0].as_dict()["message"] == "message 0"
    assert everything[0].time <= everything[-1].time


async def test_generations_round_trip(store: Store) -> None:
    assert await store.last_generation() is None
    first = await store.add_generation("d1", "applying", {"models": {"a": "h1"}})
    second = await store.add_generation(
        "d2", "applying", git_commit="abc123", git_branch="main", git_dirty=True
    )
    await store.update_generation(second, "ok", {"actions": ["start a (pinned, not running)"]})
    newest, oldest = await store.generations()
    assert (oldest.id, oldest.digest, oldest.outcome) == (first, "d1", "applying")
    assert oldest.summary == {"models": {"a": "h1"}}
    assert (oldest.git_commit, oldest.git_dirty) == (None, None)
    assert (newest.id, newest.outcome, newest.git_commit) == (second, "ok", "abc123")
    assert (newest.git_branch, newest.git_dirty) == ("main", True)
    assert newest.summary == {"actions": ["start a (pinned, not running)"]}
    assert (await store.last_generation()) == newest


async def test_documents_round_trip_and_replace_exactly(store: Store) -> None:
    a = StoredDocument("Model", "a", "m/a.yaml", 3, {"spec": {"args": ["--x"], "pin": True}})
    e = StoredDocument("Engine", "fake", "m/e.yaml", 1, {"spec": {"command": ["x"]}})
    await store.replace_documents([a, e])
    assert await store.documents() == {("Model", "a"): a, ("Engine", "fake"): e}
    await store.replace_documents([e])
    assert await store.documents() == {("Engine", "fake"): e}
    await store.replace_documents([])
    assert await store.documents() == {}


async def test_model_state_activity_and_requests(store: Store) -> None:
    await store.set_model_state("a", "Failed", "exited with code 1", retry_at=123.0)
    await store.set_model_state("a", "Failed", "exited with code 2")
    state = (await store.model_states())["a"]
    assert (state.phase, state.reason, state.retry_at) == ("Failed", "exited with code 2", None)
    await store.clear_model_state("a")
    assert await store.model_states() == {}

    await store.touch("a", when=100.0)
    await store.touch("a", when=200.0)
    assert await store.last_used() == {"a": 200.0}
    assert sql(store.path, "SELECT requests FROM activity WHERE model = 'a'") == [(2,)]

    await store.add_request_rows(
        [
            RequestRecord(1.0, "", "a", "/v1/x", 200, 0.1),
            RequestRecord(2.0, "", "b", "/v1/x", 502, 0.1),
        ]
    )
    await store.add_request_rows([])
    assert (await store.request_count(), await store.request_count("a")) == (2, 1)


async def test_request_records_are_written_as_they_are(store: Store) -> None:
    """The proxy's RequestRecords go in as one batch: every value, type and the order kept."""
    records = [
        RequestRecord(
            1796103954.2778676,
            "10.0.0.7",
            "mödel",
            "/v1/chat/completions",
            200,
            0.0012345,
            None,
            6,
            None,
        ),
        RequestRecord(2.0, "", "", "/v1/x", 499, 1e-07, 0.5, None, 4),
    ]
    await store.add_request_rows(records)
    rows = sql(
        store.path,
        "SELECT time, client, model, path, status, latency, ttft, prompt_tokens,"
        " completion_tokens, typeof(time), typeof(status) FROM requests ORDER BY id",
    )
    assert [row[:9] for row in rows] == [tuple(r) for r in records]
    assert [row[9:] for row in rows] == [("real", "integer")] * 2


async def test_a_closed_store_says_so(tmp_path: Path) -> None:
    opened = await Store.open(tmp_path / "x.db")
    await opened.close()
    with pytest.raises(RuntimeError, match="closed"):
        await opened.add_event("Note", "late")


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from reconciler.state.store import Store
    from reconciler.manifests.manifest_set import StoredDocument

    async def main() -> None:
        store = await Store.open(Path(sys.argv[1]))
        i = 0
        while True:
            event = await store.add_event("Tick", "x" * 500 + str(i), model=f"m{i % 7}")
            if i % 10 == 0:
                docs = [StoredDocument("Model", f"m{j}", "a.yaml", j, {"i": i}) for j in range(20)]
                await store.replace_documents(docs)
            print(event.id, flush=True)  # only after the write returned: committed
            i += 1

    asyncio.run(main())
    """
)


async def test_a_crash_mid_write_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "modelplane.db"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    reported: list[int] = []
    try:
        assert writer.stdout is not None
        while len(reported) < 300:
            line = writer.stdout.readline()
            assert line, f"the writer stopped early (exit {writer.poll()})"
            reported.append(int(line))
        writer.send_signal(signal.SIGKILL)  # mid-write: it never stops writing on its own
        writer.wait(timeout=10)
        reported += [int(line) for line in writer.stdout.read().split()]
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert writer.returncode == -signal.SIGKILL

    assert sql(path, "PRAGMA integrity_check") == [("ok",)]
    async with await Store.open(path) as reopened:
        stored = {e.id for e in await reopened.events(limit=100_000)}
        assert set(reported) <= stored
        documents = await reopened.documents()
        # replace_documents is one transaction: all 20 of one pass, never a mix or a half.
        assert len(documents) == 20
        assert len({d.body["i"] for d in documents.values()}) == 1


async def test_damage_found_after_open_is_kept_as_the_stores_fault(store: Store) -> None:
    for i in range(50):
        await store.add_event("Note", f"event {i}")
    assert store.fault is None
    damage_table(store.path, "events")
    with pytest.raises(sqlite3.DatabaseError):
        await store.events()
    assert store.fault is not None
    assert store.fault.startswith(f"the state database {store.path} is corrupt")
    assert "-damage-" in await store.last_used()  # the other tables still serve
