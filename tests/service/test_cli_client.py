"""The command line as a client of the running service (docs/architecture.md, "One state model").

A Node with API keys: the commands authenticate with the admin token ``run`` leaves in its state
directory (a user with the key in hand is not needed). ``load``, ``logs``, ``history``,
``events`` and ``unload`` go through the admin API; ``down`` stops every backend and the service.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.cli import run_cli
from tests.helpers.manifests import fake_engine_doc, model_doc
from tests.service.conftest import MakeBox, hash_key, node_doc

KEY = "sk-test-admin"


def test_commands_go_through_the_running_service(make_box: MakeBox, tmp_path: Path) -> None:
    box = make_box(
        {
            "node.yaml": node_doc(apiKeys=[{"name": "admin", "sha256": hash_key(KEY)}]),
            "engine.yaml": fake_engine_doc("fake"),
            "m.yaml": model_doc("m", stayWarm="1h", aliases=["gpt-4o-mini"]),
        },
        api_key=KEY,
    )
    svc = box.start()
    token = (box.state_dir / "admin-token").read_text().strip()
    assert (box.state_dir / "admin-token").stat().st_mode & 0o077 == 0  # the owner's only
    assert token and token != KEY
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def cli(*args: str) -> tuple[int, str]:
        result = run_cli(*args, cwd=elsewhere, state_dir=box.state_dir)
        return result.code, result.output

    code, text = cli("load", "gpt-4o-mini")  # an alias names the model
    assert code == 0 and text.strip() == "m: Ready", text
    assert svc.model("m")["held"] is True

    code, text = cli("logs", "m", "-n", "5")
    assert code == 0 and "--- modelplane: " in text, text
    code, text = cli("history")
    assert code == 0 and "+m" in text, text
    code, text = cli("events", "--model", "m")
    assert code == 0 and "Override" in text and "Started" in text, text

    code, text = cli("unload", "m")
    assert code == 0 and text.strip() == "m: Asleep", text
    assert svc.model("m")["phase"] == "Asleep"

    wrong = run_cli(
        "status", cwd=elsewhere, state_dir=box.state_dir, env={"MODELPLANE_API_KEY": "sk-wrong"}
    )
    assert wrong.code == 1 and "HTTP 401" in wrong.output, wrong.output

    cli("load", "m")
    pid = box.backend("m").pid
    code, text = cli("down")
    assert code == 0, text
    assert "stopped m (process" in text and f"modelplane run (pid {svc.process.pid}) exited" in text
    assert svc.process.wait(10) == 0
    assert not _alive(pid)
    # The service is gone: the commands read the database now.
    code, text = cli("events", "--model", "m", "-n", "3")
    assert code == 0 and "stopped by modelplane down" in text, text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
