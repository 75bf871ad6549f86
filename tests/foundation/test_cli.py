"""The command line as a user runs it: a new process per command (the README's exit codes)."""

from __future__ import annotations

import json
import os
import re
import signal
import uuid
from pathlib import Path

import httpx
import pytest
from ruamel.yaml import YAML

from .conftest import (
    FAKEBACKEND,
    Cli,
    ManifestDir,
    fake_engine_doc,
    group_alive,
    model_doc,
    pid_alive,
    records,
    wait_for,
)

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")  # an event line's start


@pytest.fixture
def pinned(manifests: ManifestDir) -> str:
    """A fake engine and one pinned model on it; returns the model's name."""
    manifests.write("engine.yaml", fake_engine_doc("fake"))
    manifests.write("models/m.yaml", model_doc("m", pin=True))
    return "m"


# --- validate -----------------------------------------------------------------------------------


def test_validate_a_valid_directory(cli: Cli, manifests: ManifestDir, pinned: str) -> None:
    done = cli("validate", manifests.root)
    assert done.code == 0, done.output
    assert f"{manifests.root}: valid (1 models, 1 engines, node default)" in done.stdout
    assert done.stderr == ""


def test_validate_prints_every_mistake_with_its_position(cli: Cli, manifests: ManifestDir) -> None:
    manifests.write(
        "a.yaml",
        "apiVersion: modelplane/v1\nkind: Model\nmetadata: {name: a}\n"
        "spec:\n  source: {path: /x}\n  stayWarn: 5m\n",
    )
    manifests.write(
        "sub/b.yml",
        model_doc("b", engine="nope"),
        "apiVersion: modelplane/v1\nkind: Model\nmetadata: {name: c}\n"
        "spec:\n  source: {path: /x}\n  vram: 6GX\n",
    )
    manifests.write("c.yaml", "kind: Model\nmetadata: {name: [\n")
    manifests.write("d.yaml", model_doc("ok", engine="llama-server"))
    done = cli("validate", manifests.root)
    assert done.code == 1
    lines = done.stderr.splitlines()
    assert lines[:4] == [
        f"{manifests.path('a.yaml')}:6:3: Model/a: unknown field spec.stayWarn "
        "(did you mean stayWarm?)",
        f"{manifests.path('c.yaml')}:3:1: YAML syntax: while parsing a flow node expected the "
        "node content, but found '<stream end>'",
        f"{manifests.path('sub/b.yml')}:1:1: Model/b: engine 'nope' does not exist "
        "(known: llama-cpp-python, llama-server, vllm)",
        f"{manifests.path('sub/b.yml')}:11:9: Model/c: spec.vram: not a size: '6GX' "
        "(use a number with a unit: 512MiB, 6GiB, 24GB)",
    ]
    assert lines[4] == f"4 error(s) in {manifests.root} (1 models, 0 engines valid)"
    assert done.stdout == ""


def test_validate_a_missing_directory(cli: Cli, tmp_path: Path) -> None:
    done = cli("validate", tmp_path / "nope")
    assert done.code == 1
    assert "does not exist" in done.stderr


def test_run_refuses_a_bad_listen_address(cli: Cli, manifests: ManifestDir) -> None:
    done = cli("run", manifests.root, "--listen", "::1:8400")
    assert done.code == 2
    assert "--listen: listen address '::1:8400': write an IPv6 address in brackets" in done.stderr


# --- the everyday cycle: plan, apply, apply again, status, events, logs ---------------------------


def _backends_named(model: str) -> list[int]:
    """Pids of live fake backends serving ``model`` (by command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            str(FAKEBACKEND).encode() in argv
            and model.encode() in argv
            and pid_alive(int(entry.name))
        ):
            found.append(int(entry.name))
    return found


def test_plan_apply_adopt_status_events_logs(
    cli: Cli, manifests: ManifestDir, state_dir: Path
) -> None:
    """One model's life through the CLI, each command a new process (one test: each costs)."""
    name = f"m-{uuid.uuid4().hex[:8]}"  # unique, to count its processes machine-wide
    manifests.write("engine.yaml", fake_engine_doc("fake"))
    manifests.write("models/m.yaml", model_doc(name, pin=True))
    manifests.write("models/lazy.yaml", model_doc("lazy"))

    pending = cli("plan", manifests.root)
    assert pending.code == 2, pending.output
    assert pending.stdout.splitlines()[0].split() == ["ACTION", "MODEL", "CAUSE"]
    assert pending.stdout.splitlines()[1].split() == ["start", name, "pinned,", "not", "running"]
    as_json = cli("plan", manifests.root, "--json")
    assert as_json.code == 2
    data = as_json.json()
    assert data["actions"] == [{"kind": "start", "model": name, "cause": "pinned, not running"}]
    assert (data["errors"], data["refused"], data["unavailable"]) == ([], None, {})
    assert set(data["models"]) == {name, "lazy"}
    assert data["models"][name]["runtime"] == "process"
    assert (data["models"][name]["pinned"], data["models"]["lazy"]["pinned"]) == (True, False)
    assert len(data["models"][name]["specHash"]) == 12
    assert records(state_dir) == {}  # plan changed nothing
    assert _backends_named(name) == []

    first = cli("apply", manifests.root)
    assert first.code == 0, first.output
    assert f"ok    start {name} (pinned, not running) → http://127.0.0.1:" in first.stdout
    assert "generation 1: converged, 1 action(s)" in first.stdout
    record = records(state_dir)[name]
    assert _backends_named(name) == [record["pid"]]

    # A second modelplane adopts what runs: nothing to do, the same pid, no duplicate.
    second = cli("apply", manifests.root)
    assert second.code == 0, second.output
    assert "generation 1: converged, nothing to do" in second.stdout
    assert _backends_named(name) == [record["pid"]]
    settled = cli("plan", manifests.root)
    assert settled.code == 0, settled.output
    assert "no changes" in settled.stdout

    rows = {r["name"]: r for r in cli("status", "--dir", manifests.root, "--json").json()["models"]}
    assert set(rows) == {name, "lazy"}
    m = rows[name]
    assert (m["phase"], m["sync"], m["runtime"], m["pinned"]) == (
        "Ready",
        "Synced",
        "process",
        True,
    )
    assert m["endpoint"] == f"http://127.0.0.1:{record['port']}"
    assert m["where"] == f"{manifests.path('models/m.yaml')}:1:1"
    assert (rows["lazy"]["phase"], rows["lazy"]["endpoint"]) == ("Asleep", None)
    table = cli("status", "--dir", manifests.root)
    assert table.code == 0
    header, *lines = table.stdout.splitlines()
    assert header.split() == [
        "MODEL",
        "PHASE",
        "SYNC",
        "RUNTIME",
        "GPUS",
        "ENDPOINT",
        "IDLE",
        "REVISION",
        "SIZE",
        "QUANT",
        "REASON",
    ]
    assert [line.split()[:4] for line in lines if line.startswith(name)] == [
        [name, "(pinned)", "Ready", "Synced"]
    ]

    events = cli("events", "--dir", manifests.root, "--model", name)
    assert events.code == 0
    assert [line.split()[2:4] for line in events.stdout.splitlines()] == [
        ["Starting", name],
        ["Started", name],
    ]
    assert f"start {name} (pinned, not running)" in events.stdout

    logs = cli("logs", name, "--dir", manifests.root)
    assert logs.code == 0
    assert logs.stdout.splitlines()[0].startswith("--- modelplane: ")
    assert f"fakebackend: listening on http://127.0.0.1:{record['port']}" in logs.stdout
    assert len(cli("logs", name, "--dir", manifests.root, "-n", "1").stdout.splitlines()) == 1
    missing = cli("logs", "nobody", "--dir", manifests.root)
    assert missing.code == 1 and "no log for nobody" in missing.stderr

    manifests.write(
        "models/m.yaml", model_doc(name, pin=True, args=["--tokens", "2"], env={"A": "1"})
    )
    changed = cli("plan", manifests.root, "--json")
    assert changed.code == 2
    assert changed.json()["actions"] == [
        {"kind": "recreate", "model": name, "cause": "spec changed: args, env"}
    ]

    manifests.write("broken.yaml", "kind: [\n")
    invalid = cli("plan", manifests.root)
    assert invalid.code == 1
    assert f"{manifests.path('broken.yaml')}:2:1: YAML syntax:" in invalid.stderr

    # The model's own file breaks: it keeps running, shown as Stale with the error's position.
    manifests.write("models/m.yaml", model_doc(name, pin=True).replace("spec:", "spec: ["))
    rows = {r["name"]: r for r in cli("status", "--dir", manifests.root, "--json").json()["models"]}
    assert (rows[name]["phase"], rows[name]["sync"]) == ("Ready", "Stale")
    assert f"{manifests.path('models/m.yaml')}:5:1: YAML syntax:" in rows[name]["reason"]


# --- apply: failures, invalid input, the prune guard, drift ---------------------------------------


def test_apply_fails_with_the_reason(cli: Cli, manifests: ManifestDir) -> None:
    manifests.write("a.yaml", fake_engine_doc("fake", "--exit-immediately", "4"))
    manifests.write("b.yaml", model_doc("m", pin=True))
    done = cli("apply", manifests.root)
    assert done.code == 1
    assert "FAIL  start m (pinned, not running): m: backend exited with code 4" in done.stderr
    assert "FATAL: failed to load model 'm'" in done.stderr
    assert "not converged" in done.stderr
    events = cli("events", "--dir", manifests.root, "--model", "m").stdout
    heads = [line.split()[2:4] for line in events.splitlines() if TIMESTAMP.match(line)]
    assert heads == [["Starting", "m"], ["Failed", "m"]]
    assert "FATAL: failed to load model 'm'" in events  # the log tail, below its event line


def test_apply_applies_the_valid_rest_and_exits_1_on_invalid_manifests(
    cli: Cli, manifests: ManifestDir, state_dir: Path, pinned: str
) -> None:
    manifests.write(
        "other.yaml",
        "apiVersion: modelplane/v1\nkind: Model\nmetadata: {name: n}\n"
        "spec:\n  source: {path: /x}\n  engine: fake\n  pin: true\n  bad: 1\n",
    )
    done = cli("apply", manifests.root)
    assert done.code == 1
    assert f"{manifests.path('other.yaml')}:8:3: Model/n: unknown field spec.bad" in done.stderr
    assert "ok    start m (pinned, not running)" in done.stdout
    assert set(records(state_dir)) == {"m"}


def test_apply_refuses_to_stop_every_model_unless_allowed(
    cli: Cli, manifests: ManifestDir, state_dir: Path, pinned: str
) -> None:
    assert cli("apply", manifests.root).code == 0
    pid = records(state_dir)["m"]["pid"]
    manifests.remove("models/m.yaml")

    planned = cli("plan", manifests.root)
    assert planned.code == 1
    refused = cli("apply", manifests.root)
    assert refused.code == 1
    for done in (planned, refused):
        assert "refusing to stop every model (m)" in done.stderr
        assert "Pass --allow-empty" in done.stderr
    assert pid_alive(pid)

    allowed = cli("apply", manifests.root, "--allow-empty")
    assert allowed.code == 0, allowed.output
    assert "ok    stop m (removed from manifests)" in allowed.stdout
    assert not group_alive(pid)
    assert records(state_dir) == {}


def test_a_killed_backend_is_drift_and_the_next_apply_restarts_it(
    cli: Cli, manifests: ManifestDir, state_dir: Path, pinned: str
) -> None:
    assert cli("apply", manifests.root).code == 0
    old = records(state_dir)["m"]
    os.kill(old["pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(old["pid"]), what="the backend to die")

    planned = cli("plan", manifests.root, "--json")
    assert planned.code == 2
    assert planned.json()["actions"] == [
        {"kind": "start", "model": "m", "cause": f"pinned, process {old['pid']} is gone"}
    ]
    done = cli("apply", manifests.root)
    assert done.code == 0, done.output
    new = records(state_dir)["m"]
    assert new["pid"] != old["pid"] and pid_alive(new["pid"])
    assert httpx.get(f"http://127.0.0.1:{new['port']}/health", timeout=5).status_code == 200


def test_the_node_manifest_names_the_state_directory(
    cli: Cli, manifests: ManifestDir, state_dir: Path, tmp_path: Path
) -> None:
    node_state = tmp_path / "node-state"
    manifests.write(
        "node.yaml",
        f"apiVersion: modelplane/v1\nkind: Node\nmetadata: {{name: box}}\n"
        f"spec: {{stateDir: {node_state}}}\n",
    )
    manifests.write("m.yaml", model_doc("m", engine="llama-server"))
    assert cli("apply", manifests.root).code == 0
    assert (node_state / "modelplane.db").is_file()
    assert not (state_dir / "modelplane.db").exists()


# --- schema -------------------------------------------------------------------------------------


DESIGN_MODEL = """\
apiVersion: modelplane/v1
kind: Model
metadata:
  name: qwen2.5-7b-instruct
  labels: {team: search}
spec:
  source:
    huggingface:
      repo: Qwen/Qwen2.5-7B-Instruct-GGUF
      revision: main
      files: ["*q4_k_m*.gguf"]
  engine: llama-server
  args: ["--ctx-size", "8192"]
  env: {}
  gpus: auto
  vram: 6GiB
  pin: false
  stayWarm: 15m
  priority: normal
  aliases: [gpt-4o-mini]
  maxConcurrency: 8
  startupTimeout: 10m
"""


def test_schema_is_json_schema_that_accepts_a_real_manifest(cli: Cli) -> None:
    done = cli("schema")
    assert done.code == 0
    schema = json.loads(done.stdout)
    assert schema["$schema"].startswith("http://json-schema.org/")
    model = YAML(typ="safe").load(DESIGN_MODEL)
    bad = {**model, "spec": {**model["spec"], "stayWarn": "5m"}}
    node = {"apiVersion": "modelplane/v1", "kind": "Node", "metadata": {"name": "box"}}
    try:
        import jsonschema
    except ImportError:  # no validator installed: check the structure instead
        assert {"Model", "Engine", "Node"} <= set(json.dumps(schema).split('"'))
        return
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    assert list(validator.iter_errors(model)) == []
    assert list(validator.iter_errors(node)) == []
    assert list(validator.iter_errors(bad)) != []
    assert list(validator.iter_errors({**model, "kind": "Modle"})) != []
