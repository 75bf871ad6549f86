"""Input that tries to break modelplane, through the real CLI (issue 11): each case is a clear
error that loses nothing, never a traceback, a hang or a model stopped by mistake."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.state.lock import holder
from tests.helpers.database import damage_table
from tests.helpers.privileges import permission_bits_bind

from .conftest import (
    FAKEBACKEND,
    REPO,
    Cli,
    ManifestDir,
    fake_engine_doc,
    model_doc,
    pid_alive,
    records,
    wait_for,
)


@pytest.fixture
def pinned(manifests: ManifestDir) -> str:
    manifests.write("engine.yaml", fake_engine_doc("fake"))
    manifests.write("team/m.yaml", model_doc("m", pin=True))
    return "m"


def _status(cli: Cli, manifests: ManifestDir, **options: object) -> dict[str, dict[str, object]]:
    done = cli("status", "--dir", manifests.root, "--json", **options)
    assert done.code == 0, done.output
    return {row["name"]: row for row in done.json()["models"]}


# --- limits (items 4 and 5) ----------------------------------------------------------------------


def test_a_300_level_document_is_an_error_of_that_document(
    cli: Cli, manifests: ManifestDir
) -> None:
    """It used to end ``validate`` with a RecursionError traceback (and jam ``run``'s loop)."""
    deep = "apiVersion: modelplane/v1\nkind: Model\nmetadata: {name: deep}\nspec:\n"
    deep += "  source: {path: /x}\n  env: " + "[" * 300 + "]" * 300 + "\n"
    manifests.write("m.yaml", deep, model_doc("fine", engine="llama-server"))
    done = cli("validate", manifests.root)
    assert done.code == 1
    # the 65th level: the document, spec, env, then 62 lists from column 8
    assert done.stderr.splitlines()[0] == (
        f"{manifests.path('m.yaml')}:6:70: nested deeper than 64 levels"
    )
    assert "(1 model, 0 engines valid)" in done.stderr
    assert "Traceback" not in done.output


def test_an_alias_bomb_and_a_huge_file_are_refused_quickly(
    cli: Cli, manifests: ManifestDir
) -> None:
    """A 600-byte alias bomb took minutes and gigabytes to load; 50 MB of YAML, 66 s and 937
    MB. Both are refused before they cost anything (the run's timeout is the bound)."""
    bomb = ["    x0: &x0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    bomb += [f"    x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, 10)]
    header = "apiVersion: modelplane/v1\nkind: Model\nmetadata: {name: bomb}\nspec:\n"
    header += "  source: {path: /x}\n  container:\n   extraArgs:\n"
    manifests.write("bomb.yaml", header + "\n".join(bomb) + "\n")
    big = manifests.root / "big.yaml"
    with big.open("w") as handle:
        handle.write(model_doc("big", engine="llama-server"))
        handle.write(("# padding\n" * 100_000) * 50)  # 50 MB
    manifests.write("fine.yaml", model_doc("fine", engine="llama-server"))
    done = cli("validate", manifests.root, timeout=60)
    assert done.code == 1
    assert done.stderr.splitlines() == [
        f"{manifests.path('big.yaml')}:1:1: file is 47.7 MiB, more than the 1.0 MiB a manifest "
        "file may hold (raise it with MODELPLANE_MAX_MANIFEST_SIZE)",
        f"{manifests.path('bomb.yaml')}:1:1: holds more than 10000 values once its aliases are "
        "expanded (an alias bomb?)",
        f"2 error(s) in {manifests.root} (1 model, 0 engines valid)",
    ]


# --- an unreadable folder (item 7) ---------------------------------------------------------------


@pytest.fixture
def unreadable(manifests: ManifestDir) -> Iterator[Path]:
    folder = manifests.root / "team"
    yield folder
    folder.chmod(0o755)


def test_an_unreadable_folder_keeps_its_models(
    cli: Cli, manifests: ManifestDir, pinned: str, unreadable: Path, state_dir: Path
) -> None:
    """The folder was skipped silently and its pinned model stopped as "removed from
    manifests". Now it is an error, and what it held stays in force (Stale)."""
    first = cli("apply", manifests.root)
    assert first.code == 0, first.output
    pid = records(state_dir)[pinned]["pid"]

    unreadable.chmod(0)
    drop = permission_bits_bind()  # as root, chmod 0 alone would not stop the read
    validate = cli("validate", manifests.root, prefix=drop)
    assert validate.code == 1
    assert f"{unreadable}:1:1: cannot read this folder: Permission denied" in validate.stderr

    again = cli("apply", manifests.root, prefix=drop)
    assert again.code == 1
    assert f"{unreadable}:1:1: cannot read this folder: Permission denied" in again.stderr
    assert "stop" not in again.stdout
    assert pid_alive(pid)
    row = _status(cli, manifests, prefix=drop)[pinned]
    assert (row["phase"], row["sync"]) == ("Ready", "Stale")
    assert "cannot read this folder" in str(row["reason"])

    unreadable.chmod(0o755)
    healed = cli("apply", manifests.root, prefix=drop)
    assert healed.code == 0, healed.output
    assert records(state_dir)[pinned]["pid"] == pid
    assert _status(cli, manifests)[pinned]["sync"] == "Synced"


# --- aliases follow the rules of names (item 9) --------------------------------------------------


def test_bad_aliases_are_refused_and_never_listed(cli: Cli, manifests: ManifestDir) -> None:
    manifests.write(
        "m.yaml",
        model_doc("m", engine="llama-server", aliases=["ok", "", " ", "a\r\nb", "a/../../b"]),
        model_doc("n", engine="llama-server", aliases=["Qwen/Qwen2.5-7B-Instruct"]),
    )
    done = cli("validate", manifests.root)
    assert done.code == 1
    rule = (
        "use up to 100 letters, digits, '.', '_' or '-', starting with a letter or digit; "
        "'/' may join such parts (as in Qwen/Qwen2.5-7B-Instruct)"
    )
    where = f"{manifests.path('m.yaml')}:4:"
    errors = done.stderr.splitlines()
    assert [e.split(": ", 1)[1] for e in errors[:4]] == [
        f"Model/m: spec.aliases.{i}: {alias!r} is not a valid alias: {rule}"
        for i, alias in enumerate(["", " ", "a\r\nb", "a/../../b"], start=1)
    ]
    assert all(e.startswith(where) for e in errors[:4])
    assert errors[4] == f"4 error(s) in {manifests.root} (1 model, 0 engines valid)"


# --- a corrupt state database (item 6) -----------------------------------------------------------


@pytest.mark.parametrize("damage", ["not a database", "a damaged page"])
def test_a_corrupt_database_is_refused_with_the_way_out(
    cli: Cli, manifests: ManifestDir, pinned: str, state_dir: Path, damage: str
) -> None:
    """``status`` and ``run`` printed a traceback from Store.open and then hung forever."""
    assert cli("apply", manifests.root).code == 0
    database = state_dir / "modelplane.db"
    if damage == "not a database":
        database.write_bytes(os.urandom(64 * 1024))
    else:
        damage_table(database, "events")
    for command in (["status", "--dir"], ["apply"], ["run"]):
        done = cli(*command, manifests.root, timeout=60)  # a hang fails here
        assert done.code == 1, (command, done.output)
        assert f"error: the state database {database} cannot be used: " in done.stderr
        assert f"modelplane reset-db --state-dir {state_dir}" in done.stderr
        assert "Traceback" not in done.stderr


def test_reset_db_keeps_what_reads_and_the_models_keep_running(
    cli: Cli, manifests: ManifestDir, pinned: str, state_dir: Path
) -> None:
    assert cli("apply", manifests.root).code == 0
    pid = records(state_dir)[pinned]["pid"]
    manifests.write("team/m.yaml", model_doc("m", pin=True, stayWarm="soon"))  # now invalid
    assert cli("apply", manifests.root).code == 1  # the last valid version stays in force
    database = state_dir / "modelplane.db"
    damage_table(database, "events")

    reset = cli("reset-db", "--dir", manifests.root)
    assert reset.code == 0, reset.output
    assert "kept: documents 2, overrides 0, activity 1" in reset.stdout  # (damage_table's row)
    assert "unreadable" not in reset.stdout
    assert f"running: {pinned} (process {pid})" in reset.stdout
    assert list(state_dir.glob("modelplane.db.corrupt-*"))

    # The new database still knows the last valid version: the broken model is Stale, not gone.
    after = cli("apply", manifests.root)
    assert after.code == 1
    assert "stop" not in after.stdout
    assert pid_alive(pid)
    row = _status(cli, manifests)[pinned]
    assert (row["phase"], row["sync"]) == ("Ready", "Stale")
    events = cli("events", "--dir", manifests.root)
    assert "DatabaseReset" in events.stdout

    nothing = cli("reset-db", "--dir", manifests.root)
    assert nothing.code == 0
    assert "is healthy: nothing to do" in nothing.stdout


# --- hash-key reads the key from stdin -----------------------------------------------------------


def test_hash_key_reads_the_key_from_stdin(cli: Cli) -> None:
    expected = hashlib.sha256(b"s3cret key").hexdigest()
    done = cli("hash-key", stdin="s3cret key\n")
    assert (done.code, done.stdout, done.stderr) == (0, expected + "\n", "")

    on_the_line = cli("hash-key", "s3cret key")
    assert on_the_line.stdout == expected + "\n"
    assert "shows in ps" in on_the_line.stderr

    empty = cli("hash-key", stdin="")
    assert empty.code == 1
    assert "no key given" in empty.stderr


# --- one apply at a time (item 3) ----------------------------------------------------------------


def test_two_applies_at_once_start_one_backend(
    manifests: ManifestDir, state_dir: Path, tmp_path: Path, cli: Cli
) -> None:
    """Both used to start the model: two backends, one of them unknown to `down`."""
    name = f"m-{uuid.uuid4().hex[:8]}"  # unique, to count its processes machine-wide
    manifests.write("engine.yaml", fake_engine_doc("fake", "--listen-delay", "3"))
    manifests.write("m.yaml", model_doc(name, pin=True))
    env = {**os.environ, "PYTHONPATH": str(REPO), "MODELPLANE_STATE_DIR": str(state_dir)}
    first = subprocess.Popen(
        [sys.executable, "-m", "reconciler.cli", "apply", str(manifests.root)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: holder(state_dir) == first.pid, timeout=30, what="the first to lock")
        second = cli("apply", manifests.root)
        assert second.code == 1
        assert second.stderr.strip() == (
            f"error: another modelplane (pid {first.pid}) holds {state_dir}: one `run` or "
            "`apply` at a time per state directory (read-only commands such as status still "
            "work)"
        )
    finally:
        out, errors = first.communicate(timeout=60)
    assert first.returncode == 0, out + errors
    assert list(records(state_dir)) == [name]
    assert len(_backends_named(name)) == 1


def _backends_named(model: str) -> list[int]:
    """Pids of live fake backends serving ``model`` (by command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = str(FAKEBACKEND).encode() in argv and model.encode() in argv
        if ours and entry.name.isdigit() and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found
