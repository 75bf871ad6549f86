"""The process runtime with real backends (tests/fakebackend.py) over real sockets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from reconciler.control.controller import Controller
from reconciler.runtimes.base import LaunchSpec, StartError
from reconciler.runtimes.process import ProcessRuntime, _proc_start
from tests.helpers import engine

from .conftest import (
    FAKEBACKEND,
    ManifestDir,
    fake_engine_doc,
    fake_launch_spec,
    group_alive,
    model_doc,
    pid_alive,
    records,
    wait_for,
)


def launch(
    model: str = "m",
    *extra: str,
    gpus: tuple[int, ...] | None = None,
    startup_timeout: float = 30.0,
    command: tuple[str, ...] | None = None,
) -> LaunchSpec:
    """The fake backend for ``model`` (``command`` replaces it), marked through its env."""
    spec = fake_launch_spec(
        model,
        *extra,
        env={"FAKE_MARK": "from-launch-spec"},
        gpus=gpus,
        startup_timeout=startup_timeout,
        generation=3,
    )
    return replace(spec, command=command) if command else spec


@pytest.fixture
def runtime(state_dir: Path) -> ProcessRuntime:
    return ProcessRuntime(state_dir)


def stats(endpoint: str) -> dict:
    return httpx.get(f"{endpoint}/debug/stats", timeout=5).json()


async def test_start_healthy_answer_stop(runtime: ProcessRuntime, state_dir: Path) -> None:
    inst = await runtime.start(launch("m", "--tokens", "3"))
    assert inst.state == "running" and inst.managed
    assert inst.labels["modelplane.model"] == "m"
    assert inst.spec_hash == "abcdef012345"
    assert inst.labels["modelplane.generation"] == "3"
    assert inst.endpoint is not None and inst.endpoint.startswith("http://127.0.0.1:")
    assert await runtime.healthy(inst)

    body = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
    reply = httpx.post(f"{inst.endpoint}/v1/chat/completions", json=body, timeout=10).json()
    port = inst.endpoint.rsplit(":", 1)[1]
    assert reply["choices"][0]["message"]["content"].startswith(f"m@{port} pid={inst.ident}")
    assert int(inst.ident) == stats(inst.endpoint)["pid"]

    [listed] = await runtime.list()
    assert (listed.ident, listed.state, listed.spec) == (
        inst.ident,
        "running",
        {"args": ["--tokens", "3"]},
    )
    pid = int(inst.ident)
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # its own session and group

    await runtime.stop(inst, grace=5)
    assert not group_alive(pid)
    assert await runtime.list() == []
    assert records(state_dir) == {}
    assert not await runtime.healthy(inst)


async def test_stop_takes_the_whole_process_group(runtime: ProcessRuntime) -> None:
    """A backend's helpers (here a `sleep` forked by a shell) go with it."""
    backend = " ".join([sys.executable, str(FAKEBACKEND), "--host", "{host}", "--port", "{port}"])
    inst = await runtime.start(launch("m", command=("sh", "-c", f"sleep 600 & exec {backend}")))
    pgid = int(inst.ident)
    members = [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and _pgid_of(int(p.name)) == pgid
    ]
    assert len(members) >= 2  # the backend and its sleep
    await runtime.stop(inst, grace=5)
    assert not any(pid_alive(pid) for pid in members)


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.mark.parametrize(("gpus", "expected"), [((1, 0), "1,0"), ((2,), "2"), (None, ""), ((), "")])
async def test_cuda_visible_devices_follows_the_placement(
    runtime: ProcessRuntime,
    monkeypatch: pytest.MonkeyPatch,
    gpus: tuple[int, ...] | None,
    expected: str,
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # the parent's value must not leak through
    inst = await runtime.start(launch("m", "--echo-env", "FAKE_MARK", gpus=gpus))
    try:
        env = stats(inst.endpoint or "")["env"]
        assert env == {"CUDA_VISIBLE_DEVICES": expected, "FAKE_MARK": "from-launch-spec"}
        assert inst.gpus == tuple(gpus or ())
    finally:
        await runtime.stop(inst, grace=5)


async def test_a_start_failure_carries_the_backends_last_log_lines(
    runtime: ProcessRuntime, state_dir: Path
) -> None:
    with pytest.raises(StartError) as caught:
        await runtime.start(launch("m", "--exit-immediately", "4"))
    error = caught.value
    assert error.message == "m: backend exited with code 4 before becoming ready"
    assert "FATAL: failed to load model 'm': simulated failure" in error.log_tail
    assert "--- last log lines ---" in str(error) and error.log_tail in str(error)
    assert records(state_dir) == {}
    assert await runtime.list() == []


async def test_a_startup_timeout_is_a_failure_and_leaves_nothing_running(
    runtime: ProcessRuntime, state_dir: Path
) -> None:
    with pytest.raises(StartError, match=r"/health did not answer 200 within 0\.6s") as caught:
        await runtime.start(launch("m", "--fail-health", startup_timeout=0.6))
    assert "listening on http://127.0.0.1:" in caught.value.log_tail
    pid = int(caught.value.log_tail.split("pid=")[-1].split()[0])
    assert not pid_alive(pid)
    assert records(state_dir) == {}


async def test_a_missing_executable_is_a_start_error(runtime: ProcessRuntime) -> None:
    with pytest.raises(StartError, match="cannot run '/no/such/server'"):
        await runtime.start(launch("m", command=("/no/such/server", "--port", "{port}")))


async def test_a_killed_child_is_seen_as_exited(runtime: ProcessRuntime) -> None:
    inst = await runtime.start(launch("m"))
    os.kill(int(inst.ident), signal.SIGKILL)
    wait_for(lambda: not pid_alive(int(inst.ident)), what="the backend to die")
    [listed] = await runtime.list()
    assert listed.state == "exited"
    assert listed.exit_reason == "killed by signal 9"
    await runtime.stop(listed)
    assert await runtime.list() == []


async def test_stop_escalates_to_sigkill_after_the_grace_period(
    runtime: ProcessRuntime, state_dir: Path
) -> None:
    inst = await runtime.start(launch("m", "--ignore-sigterm"))
    began = time.monotonic()
    await runtime.stop(inst, grace=0.5)
    assert time.monotonic() - began >= 0.5  # it did wait for the grace period first
    assert not group_alive(int(inst.ident))
    assert "ignoring SIGTERM (--ignore-sigterm)" in await runtime.logs("m")
    assert records(state_dir) == {}


async def test_a_recycled_pid_is_never_signalled(runtime: ProcessRuntime, state_dir: Path) -> None:
    """A record whose pid now belongs to another process: exited, and stop leaves it alone."""
    stranger = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        (state_dir / "instances").mkdir(parents=True)
        record = {
            "model": "m",
            "pid": stranger.pid,
            "pgid": stranger.pid,
            "proc_start": str(int(_proc_start(stranger.pid) or 0) - 1),
            "port": 1,
            "labels": {"modelplane.managed": "true", "modelplane.model": "m"},
        }
        (state_dir / "instances" / "m.json").write_text(json.dumps(record))
        [listed] = await runtime.list()
        assert listed.state == "exited"
        assert listed.exit_reason == f"process {stranger.pid} is gone"
        await runtime.stop(listed, grace=0.2)
        assert stranger.poll() is None
        assert records(state_dir) == {}
    finally:
        stranger.kill()
        stranger.wait()


async def test_a_new_runtime_adopts_a_running_backend(
    runtime: ProcessRuntime, state_dir: Path
) -> None:
    inst = await runtime.start(launch("m"))
    later = ProcessRuntime(state_dir)  # a restarted modelplane: no child handles, only records
    [adopted] = await later.list()
    assert (adopted.ident, adopted.state, adopted.endpoint) == (
        inst.ident,
        "running",
        inst.endpoint,
    )
    assert await later.healthy(adopted)
    await later.stop(adopted, grace=5)
    assert not group_alive(int(inst.ident))


async def test_logs_keep_every_start(runtime: ProcessRuntime) -> None:
    first = await runtime.start(launch("m"))
    await runtime.stop(first, grace=5)
    second = await runtime.start(launch("m"))
    await runtime.stop(second, grace=5)
    text = await runtime.logs("m", lines=1000)
    assert text.count("--- modelplane: ") == 2
    assert f"pid={first.ident}" in text and f"pid={second.ident}" in text
    assert len((await runtime.logs("m", lines=2)).splitlines()) == 2
    assert await runtime.logs("never-started") == ""


# --- through the controller: events -------------------------------------------------------------


async def test_a_failed_start_is_an_event_with_the_log_tail(
    manifests: ManifestDir, controller: Controller
) -> None:
    manifests.write("a.yaml", fake_engine_doc("broken", "--exit-immediately", "5"))
    manifests.write("b.yaml", model_doc("m", engine="broken", pin=True))
    result = await engine.apply(controller)
    assert not result.ok
    [failure] = result.failures
    assert failure.message.startswith("m: backend exited with code 5 before becoming ready")
    events = await controller.store.events(model="m")
    assert [e.kind for e in events] == ["Starting", "Failed"]
    assert "FATAL: failed to load model 'm'" in events[-1].message
    assert events[-1].message.startswith("start m (pinned, not running): m: backend exited")
    [row] = await engine.status(controller)
    assert row.phase == "Failed" and "exited with code 5" in row.reason


async def test_manifest_gpus_reach_the_backend_as_cuda_visible_devices(
    manifests: ManifestDir, controller: Controller, state_dir: Path
) -> None:
    manifests.write("engine.yaml", fake_engine_doc("fake"))
    manifests.write(
        "models.yaml",
        model_doc("explicit", pin=True, gpus=[1, 0]),
        model_doc("cpu", pin=True, gpus="none"),
    )
    result = await engine.apply(controller)
    assert result.ok, result.failures
    found = {
        name: stats(f"http://127.0.0.1:{record['port']}")["env"]["CUDA_VISIBLE_DEVICES"]
        for name, record in records(state_dir).items()
    }
    assert found == {"explicit": "1,0", "cpu": ""}
    assert {r.name: r.gpus for r in await engine.status(controller)} == {
        "explicit": (1, 0),
        "cpu": (),
    }
