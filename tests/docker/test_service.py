"""``modelplane run`` on the docker runtime, end to end: the real service process, the real test
dockerd (the Node names its private socket), the fake backend inside the imported image.

The Node's resync is 5 minutes in every test, so anything that happens sooner was triggered by
the daemon's event stream, a manifest change or a request, never by the periodic resync.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import openai
import pytest

from tests.docker.manifests import docker_engine, docker_model, docker_node, weights_file
from tests.docker.registry import Registry
from tests.docker_env import IMAGE, TEST_LABEL, DockerDaemon
from tests.helpers.manifests import ManifestDir
from tests.helpers.service import (
    ServiceProcess,
    modelplane_command,
    service_env,
    start_service,
)


@dataclass
class Box:
    """A manifest directory for the test daemon, a state dir and a weights file."""

    daemon: DockerDaemon
    mdir: ManifestDir
    state: Path
    weights: Path

    def write(self, *models: str, engines: tuple[str, ...] = ()) -> None:
        node = docker_node(self.daemon.host)
        self.mdir.write("box.yaml", node, docker_engine(), *engines, *models)

    def run(self, **kwargs: Any) -> ServiceProcess:
        return start_service(self.mdir.root, self.state, **kwargs)

    def cli(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            modelplane_command(*args),
            env=service_env(self.state),
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def box(docker_daemon: DockerDaemon, clean_docker: None, tmp_path: Path) -> Iterator[Box]:
    yield Box(
        docker_daemon,
        ManifestDir(tmp_path / "manifests"),
        tmp_path / "state",
        weights_file(tmp_path / "models"),
    )


def managed(client: docker.DockerClient) -> dict[str, Any]:
    """Managed containers by name (running or not)."""
    found = client.containers.list(all=True, filters={"label": "modelplane.managed=true"})
    return {c.name: c for c in found}


def stranger(client: docker.DockerClient, name: str, **labels: str) -> Any:
    """A running container modelplane must never touch (carries only the tests' cleanup label)."""
    return client.containers.run(
        IMAGE,
        ["sleep", "300"],
        name=name,
        labels={TEST_LABEL: "true", **labels},
        network_mode="none",
        init=True,
        detach=True,
    )


def chat(svc: ServiceProcess, model: str, timeout: float = 60) -> str:
    client = openai.OpenAI(base_url=svc.base_url, api_key="x", timeout=timeout, max_retries=0)
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}]
    )
    return reply.choices[0].message.content or ""


def event_kinds(svc: ServiceProcess, model: str) -> list[str]:
    return [e["kind"] for e in svc.events(model)]


def wait_for(predicate, timeout: float, what: str, svc: ServiceProcess | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    log = svc.log_text()[-3000:] if svc else ""
    raise AssertionError(f"not within {timeout}s: {what}\n{log}")


# --- start, settings, request -------------------------------------------------------------------


def test_a_model_runs_in_a_labelled_container_with_its_settings(box, docker_client):
    ulimits = [{"name": "nofile", "soft": 1024, "hard": 2048}]
    container = {"shmSize": "64MiB", "memory": "256MiB", "extraArgs": {"ulimits": ulimits}}
    box.write(docker_model("tiny", box.weights, container=container))

    with box.run() as svc:
        entry = svc.wait_phase("tiny", "Ready", timeout=60)
        reply = chat(svc, "tiny")
        stats = svc.get("/upstream/tiny/debug/stats")

        assert entry["runtime"] == "docker" and entry["endpoint"].startswith("http://127.0.0.1:")
        port = entry["endpoint"].rsplit(":", 1)[1]
        assert reply.startswith(f"tiny@{port} ")
        assert stats["model_path"] == str(box.weights)  # {model_path} means the same inside
        (ctr,) = managed(docker_client).values()
        attrs = ctr.attrs
        assert ctr.name == "modelplane-tiny"
        labels = attrs["Config"]["Labels"]
        assert labels["modelplane.model"] == "tiny" and labels["modelplane.generation"] == "1"
        assert len(labels["modelplane.spec-hash"]) == 12
        assert attrs["Config"]["Entrypoint"] == ["python3"]  # {python}: the image's python3
        assert attrs["Config"]["Healthcheck"] == {"Test": ["NONE"]}  # modelplane probes itself
        host = attrs["HostConfig"]
        assert host["NetworkMode"] == "host"
        assert (host["ShmSize"], host["Memory"]) == (64 * 2**20, 256 * 2**20)
        assert host["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
        folder = str(box.weights.parent)
        mounts = {m["Destination"]: (m["Source"], m["RW"]) for m in attrs["Mounts"]}
        assert mounts[folder] == (folder, False)  # the weights: read-only, at the same path
        assert ctr.exec_run(["cat", str(box.weights)]).output == box.weights.read_bytes()
        assert ctr.exec_run(["touch", f"{folder}/x"]).exit_code != 0
        assert event_kinds(svc, "tiny") == ["Starting", "Started"]

        assert svc.stop() == 0
    # modelplane stopped; the model did not: the next run adopts it
    assert managed(docker_client)["modelplane-tiny"].status == "running"


# --- replacement and prune ------------------------------------------------------------------------


def docker_events(client: docker.DockerClient, since: float, model: str) -> list[dict[str, Any]]:
    """The daemon's container events for a model's containers between ``since`` and now."""
    return list(
        client.events(
            since=since,
            until=time.time() + 0.5,
            filters={"type": "container", "label": f"modelplane.model={model}"},
            decode=True,
        )
    )


def test_a_spec_change_replaces_the_container_stop_before_start(box, docker_client):
    box.write(docker_model("tiny", box.weights))
    with box.run() as svc:
        before = svc.wait_phase("tiny", "Ready", timeout=60)
        old = managed(docker_client)["modelplane-tiny"].id
        since = time.time() - 1

        # the new backend needs 2 s to get healthy: a request sent meanwhile waits for it
        box.write(docker_model("tiny", box.weights, args=["--startup-delay", "2"]))
        wait_for(lambda: svc.model("tiny")["phase"] != "Ready", 20, "recreate begins", svc)
        reply = chat(svc, "tiny")

        after = svc.wait_phase("tiny", "Ready")
        new = managed(docker_client)["modelplane-tiny"].id
        assert new != old
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(old)
        assert after["endpoint"] != before["endpoint"]
        assert reply.startswith(f"tiny@{after['endpoint'].rsplit(':', 1)[1]} ")
        seen = [
            (e["Action"], e["id"], e["timeNano"])
            for e in docker_events(docker_client, since, "tiny")
        ]
        old_gone = max(t for action, ident, t in seen if ident == old and action == "destroy")
        new_start = min(t for action, ident, t in seen if ident == new and action == "start")
        assert old_gone < new_start  # never both at once: VRAM cannot hold two copies
        recreate = [e for e in svc.events("tiny") if e["kind"] == "Starting"][-1]["message"]
        assert recreate == "recreate tiny (spec changed: args)"


def test_a_removed_model_is_pruned_and_strangers_are_never_touched(box, docker_client):
    unlabelled = stranger(docker_client, "modelplane-x")
    foreign = stranger(docker_client, "modelplane-other", **{"modelplane.managed": "false"})
    box.write(docker_model("a", box.weights), docker_model("b", box.weights))
    with box.run() as svc:
        svc.wait_phase("a", "Ready", timeout=60)
        svc.wait_phase("b", "Ready", timeout=60)
        kept = managed(docker_client)["modelplane-a"].id

        box.write(docker_model("a", box.weights), docker_model("x", box.weights))
        wait_for(lambda: "modelplane-b" not in managed(docker_client), 20, "b pruned", svc)
        failed = svc.wait_phase("x", "Failed")

        assert managed(docker_client)["modelplane-a"].id == kept
        assert "stop b (removed from manifests)" in [e["message"] for e in svc.events("b")]
        assert "a container named modelplane-x exists and is not managed" in failed["reason"]
        assert failed["retryAt"] is None  # permanent: no retries against a stranger's name
    for container in (unlabelled, foreign):
        container.reload()
        assert container.status == "running"
        assert docker_client.containers.get(container.name).id == container.id


# --- failures ------------------------------------------------------------------------------------


def test_a_killed_container_is_restarted_from_the_event_stream(box, docker_client):
    box.write(docker_model("tiny", box.weights))
    with box.run() as svc:
        svc.wait_phase("tiny", "Ready", timeout=60)
        old = managed(docker_client)["modelplane-tiny"]
        killed_at = time.monotonic()

        old.kill()

        def replaced() -> bool:
            now = managed(docker_client).get("modelplane-tiny")
            return now is not None and now.id != old.id and now.status == "running"

        wait_for(replaced, 60, "a new container", svc)
        svc.wait_phase("tiny", "Ready")
        took = time.monotonic() - killed_at
        assert took < 120  # the resync is 5 minutes: the daemon's event stream did this
        crashed = [e for e in svc.events("tiny") if e["kind"] == "Crashed"]
        assert len(crashed) == 1 and crashed[0]["message"].startswith("exited with code 137")
        # (after Started, the loop may record Recovered: the model had crashed)
        kinds = [k for k in event_kinds(svc, "tiny") if k != "Recovered"]
        assert kinds[-2:] == ["Starting", "Started"]
        assert "tiny" in chat(svc, "tiny")


def test_a_crash_loop_backs_off_shows_the_log_tail_and_resets_on_a_spec_change(box, docker_client):
    box.write(docker_model("tiny", box.weights, args=["--exit-immediately", "3"]))
    with box.run() as svc:
        failed = svc.wait_phase("tiny", "Failed", timeout=60)
        assert "exited with code 3 before it became healthy" in failed["reason"]
        assert "FATAL: failed to load model 'tiny'" in failed["reason"]  # the log tail
        assert failed["retryAt"] > time.time() - 1

        def tries() -> list[dict[str, Any]]:
            return [e for e in svc.events("tiny") if e["kind"] in ("Starting", "Failed")]

        def third_failure() -> dict[str, Any] | None:
            entry = svc.model("tiny")
            return entry if "(failure 3)" in entry["reason"] else None

        entry = wait_for(third_failure, 60, "three failed starts", svc)
        assert entry["phase"] == "Failed" and entry["retryAt"] > time.time()
        starts = [e["time"] for e in tries() if e["kind"] == "Starting"]
        fails = [e["time"] for e in tries() if e["kind"] == "Failed"]
        # exponential: each retry waits at least twice as long as the one before (2 s, 4 s)
        assert starts[1] - fails[0] >= 1.9 and starts[2] - fails[1] >= 3.9
        status, body = svc.request(
            "POST", "/v1/chat/completions", {"model": "tiny", "messages": []}
        )
        assert status == 503 and "FATAL: failed to load model" in body["error"]["message"]
        assert not managed(docker_client)  # a failed start leaves no container behind

        retry_at = entry["retryAt"]  # 8 s after the third failure
        box.write(docker_model("tiny", box.weights))  # fixed: a fresh start, no waiting
        ready = svc.wait_phase("tiny", "Ready", timeout=60)
        last_start = [e for e in svc.events("tiny") if e["kind"] == "Starting"][-1]
        assert last_start["time"] < retry_at
        assert ready["reason"] == "" and ready["retryAt"] is None


def test_image_pull_never_with_a_missing_image_fails_once_with_a_clear_reason(box, docker_client):
    missing = "modelplane-test/missing:1"
    engine = docker_engine("offline", image=missing)
    box.write(docker_model("tiny", box.weights, engine="offline"), engines=(engine,))
    with box.run() as svc:
        failed = svc.wait_phase("tiny", "Failed", timeout=60)
        for _ in range(3):
            svc.request("POST", "/api/reconcile")
        status, body = svc.request(
            "POST", "/v1/chat/completions", {"model": "tiny", "messages": []}
        )

        assert failed["reason"] == f"image {missing} not present and imagePull is Never"
        assert failed["retryAt"] is None
        assert event_kinds(svc, "tiny") == ["Starting", "Failed"]  # no retry storm
        assert status == 503
        assert f"image {missing} not present and imagePull is Never" in body["error"]["message"]
        assert not managed(docker_client)


def test_a_missing_image_is_pulled_with_events(box, docker_client):
    with Registry() as registry:
        image = f"{registry.host}/modelplane-test/tiny:1"
        engine = docker_engine("remote", image=image, image_pull="IfNotPresent")
        box.write(docker_model("tiny", box.weights, engine="remote"), engines=(engine,))
        try:
            with box.run() as svc:
                # the pulled image holds no python3: the start itself fails, after the pull
                svc.wait_phase("tiny", "Failed", timeout=60)
                events = [(e["kind"], e["message"]) for e in svc.events("tiny")]
        finally:
            docker_client.images.remove(image, force=True)

    kinds = [kind for kind, _ in events]
    assert kinds[:4] == ["Starting", "Pulling", "Pulled", "Failed"]
    assert events[1][1] == f"pulling image {image}"
    assert events[2][1].startswith(f"pulled image {image} (1 layer(s), ")


def test_daemon_down_is_reported_and_modelplane_recovers_when_it_returns(box, docker_client):
    if not box.daemon.owned:
        pytest.skip("the daemon is not ours to stop (MODELPLANE_TEST_DOCKER_HOST)")
    box.write(docker_model("tiny", box.weights))
    with box.run() as svc:
        svc.wait_phase("tiny", "Ready", timeout=60)

        box.daemon.stop()
        unreachable = f"docker daemon at {box.daemon.host} is unreachable"
        wait_for(lambda: svc.request("GET", "/readyz")[0] == 503, 30, "readyz 503", svc)
        assert svc.request("GET", "/readyz")[0] == 503
        readyz = svc.request("GET", "/readyz")[1]
        entry = svc.model("tiny")
        cli = box.cli("status", "--json", "--dir", box.mdir.root)
        request_status, body = svc.request(
            "POST", "/v1/chat/completions", {"model": "tiny", "messages": []}
        )

        assert unreachable in readyz["reason"]
        assert unreachable in svc.status()["runtimesUnavailable"]["docker"]
        assert entry["phase"] == "Unknown" and unreachable in entry["reason"]
        assert svc.request("GET", "/healthz")[0] == 200 and svc.process.poll() is None
        assert request_status == 503 and unreachable in body["error"]["message"]
        assert cli.returncode == 0, cli.stderr
        (row,) = json.loads(cli.stdout)["models"]
        assert row["phase"] == "Unknown" and unreachable in row["reason"]
        plan = box.cli("plan", box.mdir.root)  # nothing can be seen, so nothing to do
        assert plan.returncode == 0, plan.stdout + plan.stderr
        assert f"runtime docker unavailable: {unreachable}" in plan.stderr

        box.daemon.start()
        svc.wait_ready(timeout=30)
        svc.wait_phase("tiny", "Ready", timeout=60)
        assert "tiny" in chat(svc, "tiny")
        kinds = [e["kind"] for e in svc.events()]
        assert "RuntimeUnavailable" in kinds and "RuntimeAvailable" in kinds
        assert "Crashed" not in kinds  # not knowing is not a crash


# --- adoption and down -------------------------------------------------------------------------


def test_a_restarted_modelplane_adopts_the_container_and_down_removes_only_managed_ones(
    box, docker_client
):
    unlabelled = stranger(docker_client, "modelplane-x")
    box.write(docker_model("tiny", box.weights))
    with box.run() as svc:
        first = svc.wait_phase("tiny", "Ready", timeout=60)
        assert svc.stop() == 0
    ident = managed(docker_client)["modelplane-tiny"].id

    with box.run() as svc:
        again = svc.wait_phase("tiny", "Ready")
        assert "tiny" in chat(svc, "tiny")
        assert event_kinds(svc, "tiny") == ["Starting", "Started"]  # from the first run only
        assert svc.stop() == 0
    assert again["endpoint"] == first["endpoint"]
    assert managed(docker_client)["modelplane-tiny"].id == ident

    down = box.cli("down", "--dir", box.mdir.root)

    assert down.returncode == 0, down.stderr
    assert f"stopped tiny (docker {ident})" in down.stdout
    assert not managed(docker_client)
    unlabelled.reload()
    assert unlabelled.status == "running"


def test_a_backend_dying_during_a_request_is_a_crash_with_backoff(box, docker_client):
    box.write(docker_model("tiny", box.weights, args=["--crash-after", "1", "--crash-mid-stream"]))
    with box.run() as svc:
        svc.wait_phase("tiny", "Ready", timeout=60)
        first = managed(docker_client)["modelplane-tiny"].id

        status, _ = svc.request("POST", "/v1/chat/completions", {"model": "tiny", "messages": []})

        assert status == 502
        crashed = wait_for(
            lambda: [e for e in svc.events("tiny") if e["kind"] == "Crashed"], 30, "Crashed", svc
        )
        assert len(crashed) == 1 and crashed[0]["message"].startswith("exited with code 3")
        failed = wait_for(lambda: svc.model("tiny")["retryAt"], 10, "a retry time", svc)
        assert failed > crashed[0]["time"]  # backing off, not restarted at once
        svc.wait_phase("tiny", "Ready", timeout=60)  # restarted after the backoff
        assert managed(docker_client)["modelplane-tiny"].id != first
