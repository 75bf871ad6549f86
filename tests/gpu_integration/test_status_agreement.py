"""``modelplane status`` says what ``/api/status`` says (docs/architecture.md: one state model).

While ``modelplane run`` is up the CLI is a client of its admin API, found from any folder
through the last run's state directory; once it stops, the CLI reads the phases the service left
in the database. Either way a model that could not be placed is ``Unschedulable`` with the same
reason, never ``Asleep``.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.helpers.cli import run_cli
from tests.helpers.manifests import ManifestDir, fake_engine_doc, model_doc
from tests.helpers.service import start_service

from .conftest import node_doc


def isolated_env(home: Path) -> dict[str, str]:
    """A user with nothing but a home: no MODELPLANE_* variables, their own XDG state."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "XDG_STATE_HOME": str(home / "state"),
    }


def test_status_from_any_folder_agrees_with_the_api(
    manifests: ManifestDir, state_dir: Path, tmp_path: Path
) -> None:
    manifests.write("node.yaml", node_doc(queue_timeout="1s"))
    manifests.write("engine.yaml", fake_engine_doc("fake"))
    manifests.write("big.yaml", model_doc("big", vram="16GiB"))  # the GPUs have 10 GiB each
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    user = isolated_env(home)

    with start_service(
        manifests.root, state_dir, env={"XDG_STATE_HOME": user["XDG_STATE_HOME"]}
    ) as svc:
        body = {"model": "big", "messages": [{"role": "user", "content": "hi"}]}
        reply = httpx.post(f"{svc.base_url}/chat/completions", json=body, timeout=60)
        assert reply.status_code == 503, reply.text
        api = svc.model("big")
        assert api["phase"] == "Unschedulable" and "16.0 GiB" in api["reason"], api

        found = run_cli("status", "--json", cwd=elsewhere, env=user, inherit=False)
        assert found.code == 0, found.output
        cli = next(m for m in found.json()["models"] if m["name"] == "big")
        assert (cli["phase"], cli["reason"]) == (api["phase"], api["reason"])

        table = run_cli("status", cwd=elsewhere, env=user, inherit=False)
        assert table.code == 0, table.output
        row = next(line for line in table.stdout.splitlines() if line.startswith("big"))
        assert "Unschedulable" in row and "16.0 GiB" in row, table.stdout

    # The service is gone: the phase it left in the database.
    offline = run_cli("status", "--json", cwd=elsewhere, env=user, inherit=False)
    assert offline.code == 0, offline.output
    cli = next(m for m in offline.json()["models"] if m["name"] == "big")
    assert (cli["phase"], cli["reason"]) == (api["phase"], api["reason"])


def test_a_wrong_guess_says_where_it_looked(tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    # (STATE_DIRECTORY: the default state directory, empty, whoever runs the tests)
    user = {**isolated_env(home), "STATE_DIRECTORY": str(tmp_path / "empty")}
    result = run_cli("status", cwd=elsewhere, env=user, inherit=False)
    assert result.code == 1
    for place in ("--dir: not given", "$MODELPLANE_DIR: unset", "./manifests: no such directory"):
        assert place in result.stderr, result.stderr
    assert "the last run: none recorded in" in result.stderr
    assert f"{tmp_path / 'empty'}: no modelplane.db" in result.stderr
    assert "Pass --dir DIR" in result.stderr

    missing = run_cli("events", "--dir", tmp_path / "nope", cwd=elsewhere, env=user, inherit=False)
    assert missing.code == 1 and "does not exist" in missing.stderr, missing.output
