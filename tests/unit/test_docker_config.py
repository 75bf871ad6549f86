"""The docker runtime's pure pieces: create() arguments, inspect data, events, pull progress."""

from __future__ import annotations

import json
import os

import pytest

from reconciler.runtimes.base import ContainerOptions, LaunchSpec
from reconciler.runtimes.docker import (
    BRIDGE_PORT,
    PORT_LABEL,
    SPEC_LABEL,
    PermanentStartError,
    _PullTracker,
    _timestamp,
    container_kwargs,
    instance_from_attrs,
)
from reconciler.runtimes.docker_events import parse_event
from tests.docker_env import DockerUnavailable, debian_mirror, docker_required, start_daemon


def spec(**overrides: object) -> LaunchSpec:
    values = {
        "model": "qwen",
        "spec_hash": "abc",
        "spec": {"engine": "llama-server", "args": ["-c", "8192"]},
        "command": ("/app/llama-server", "--host", "{host}", "--port", "{port}", "-m", "/m/q.gguf"),
        "env": {"A": "1"},
        "gpus": None,
        "health_path": "/health",
        "startup_timeout": 60.0,
        "generation": 3,
        "image": "ghcr.io/ggml-org/llama.cpp:server-cuda",
        "mounts": ("/var/lib/modelplane/hf",),
    }
    values.update(overrides)
    return LaunchSpec(**values)


def test_host_networking_binds_loopback_on_the_allocated_port():
    kwargs = container_kwargs(spec(), 41234, "modelplane")

    assert kwargs["network_mode"] == "host" and "ports" not in kwargs
    assert kwargs["entrypoint"] == ["/app/llama-server"]
    assert kwargs["command"] == ["--host", "127.0.0.1", "--port", "41234", "-m", "/m/q.gguf"]
    assert kwargs["name"] == "modelplane-qwen"
    assert kwargs["labels"]["modelplane.managed"] == "true"
    assert kwargs["labels"]["modelplane.generation"] == "3"
    assert kwargs["labels"][PORT_LABEL] == "41234"
    assert json.loads(kwargs["labels"][SPEC_LABEL]) == spec().spec
    assert kwargs["environment"] == {"A": "1"}
    (mount,) = kwargs["mounts"]
    assert (mount["Source"], mount["Target"], mount["ReadOnly"]) == (
        "/var/lib/modelplane/hf",
        "/var/lib/modelplane/hf",
        True,
    )
    assert "device_requests" not in kwargs
    assert kwargs["healthcheck"] == {"test": ["NONE"]}  # the image's own probes a wrong port


def test_bridge_publishes_the_engine_port_on_loopback_only():
    kwargs = container_kwargs(spec(container=ContainerOptions(network="bridge")), 0, "mp-net")

    assert kwargs["network"] == "mp-net" and "network_mode" not in kwargs
    assert kwargs["ports"] == {f"{BRIDGE_PORT}/tcp": ("127.0.0.1", None)}
    assert kwargs["command"][:4] == ["--host", "0.0.0.0", "--port", str(BRIDGE_PORT)]
    assert PORT_LABEL not in kwargs["labels"]


def test_explicit_gpus_become_one_device_request():
    (request,) = container_kwargs(spec(gpus=(0, 1)), 1, "n")["device_requests"]

    assert request["DeviceIDs"] == ["0", "1"] and request["Capabilities"] == [["gpu"]]
    assert container_kwargs(spec(gpus=(0, 1)), 1, "n")["labels"]["modelplane.gpus"] == "0,1"
    assert "device_requests" not in container_kwargs(spec(gpus=()), 1, "n")


def test_container_options_map_to_sdk_arguments():
    options = ContainerOptions(
        shm_size=2**30,
        memory=2**33,
        user="1000",
        volumes=("/a:/b:ro",),
        extra_args={"ipc_mode": "host"},
    )
    kwargs = container_kwargs(spec(container=options), 1, "n")

    assert (kwargs["shm_size"], kwargs["mem_limit"], kwargs["user"]) == (2**30, 2**33, "1000")
    assert kwargs["volumes"] == ["/a:/b:ro"] and kwargs["ipc_mode"] == "host"


@pytest.mark.parametrize("key", ["name", "labels", "network_mode", "ports", "image"])
def test_extra_args_may_not_take_over_what_modelplane_owns(key):
    options = ContainerOptions(extra_args={key: "x"})

    with pytest.raises(PermanentStartError, match=f"extraArgs may not set {key}"):
        container_kwargs(spec(container=options), 1, "n")


def test_no_image_is_a_permanent_error():
    with pytest.raises(PermanentStartError, match="model qwen: the docker runtime needs"):
        container_kwargs(spec(image=None), 1, "n")


def attrs(status: str, labels: dict[str, str], **state: object) -> dict:
    return {
        "Id": "c1",
        "Config": {"Labels": labels},
        "State": {"Status": status, "StartedAt": "2025-01-02T03:04:05.123456789Z", **state},
        "NetworkSettings": {"Ports": {}},
    }


def test_inspect_data_becomes_an_instance():
    labels = container_kwargs(spec(gpus=(1,)), 5555, "n")["labels"]

    instance = instance_from_attrs(attrs("running", labels))

    assert (instance.model, instance.ident, instance.state) == ("qwen", "c1", "running")
    assert instance.endpoint == "http://127.0.0.1:5555"
    assert instance.spec == spec().spec and instance.spec_hash == "abc" and instance.managed
    assert instance.gpus == (1,)
    assert instance.started_at == pytest.approx(1735787045.123456)
    assert instance.exit_reason is None


def test_an_exited_container_says_why_and_has_no_endpoint():
    labels = container_kwargs(spec(), 5555, "n")["labels"]

    instance = instance_from_attrs(attrs("exited", labels, ExitCode=137, OOMKilled=True), "boom")

    assert instance.state == "exited" and instance.endpoint is None
    assert instance.exit_reason == (
        "exited with code 137 (killed: out of memory)\n--- last log lines ---\nboom"
    )


def test_bridge_endpoint_comes_from_the_loopback_binding():
    labels = container_kwargs(spec(container=ContainerOptions(network="bridge")), 0, "n")["labels"]
    data = attrs("running", labels)
    data["NetworkSettings"]["Ports"] = {
        f"{BRIDGE_PORT}/tcp": [
            {"HostIp": "0.0.0.0", "HostPort": "1"},
            {"HostIp": "127.0.0.1", "HostPort": "32768"},
        ]
    }

    assert instance_from_attrs(data).endpoint == "http://127.0.0.1:32768"


def test_a_broken_spec_label_is_no_crash():
    instance = instance_from_attrs(
        attrs("created", {"modelplane.managed": "true", SPEC_LABEL: "{"})
    )

    assert instance.spec is None and instance.state == "starting"


def test_timestamps():
    assert _timestamp("0001-01-01T00:00:00Z") == 0.0
    assert _timestamp("") == 0.0
    assert _timestamp("2025-01-02T03:04:05+01:00") == 1735783445.0


def test_events_of_managed_containers_only():
    raw = {
        "Type": "container",
        "Action": "die",
        "Actor": {
            "ID": "c1",
            "Attributes": {
                "modelplane.managed": "true",
                "modelplane.model": "m",
                "exitCode": "137",
            },
        },
        "timeNano": 1_700_000_000_500_000_000,
    }
    event = parse_event(raw)

    assert (event.model, event.action, event.container_id, event.exit_code) == (
        "m",
        "die",
        "c1",
        137,
    )
    assert event.time == pytest.approx(1_700_000_000.5)
    raw["Actor"]["Attributes"]["modelplane.managed"] = "false"
    assert parse_event(raw) is None
    assert (
        parse_event({"Type": "network", "Actor": {"Attributes": {"modelplane.managed": "true"}}})
        is None
    )


def test_pull_progress_folds_layers():
    tracker = _PullTracker("m", "img", every=0)

    assert tracker.update({"status": "Pulling from library/x", "id": "latest"}) is None
    tracker.update(
        {"status": "Downloading", "id": "l1", "progressDetail": {"current": 5, "total": 10}}
    )
    progress = tracker.update({"status": "Already exists", "id": "l2"})
    assert (
        progress.layers_done,
        progress.layers_total,
        progress.bytes_done,
        progress.bytes_total,
    ) == (1, 2, 5, 10)
    tracker.update({"status": "Pull complete", "id": "l1"})
    done = tracker.finished()
    assert (done.status, done.layers_done, done.bytes_done) == ("done", 2, 10)


def test_debian_mirror_from_deb822_and_one_line_sources(tmp_path):
    deb822 = tmp_path / "debian.sources"
    deb822.write_text("Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    one_line = tmp_path / "sources.list"
    one_line.write_text("# x\ndeb [arch=amd64] http://old.example/debian bookworm main\n")
    other = tmp_path / "other.sources"
    other.write_text("URIs: https://deb.nodesource.com/node_20.x\n")

    assert debian_mirror((other, deb822)) == "http://mirror.example/debian"
    assert debian_mirror((one_line,)) == "http://old.example/debian"
    assert debian_mirror((other,)) == "http://deb.debian.org/debian"


def test_no_root_no_daemon_with_a_clear_reason(monkeypatch):
    monkeypatch.delenv("MODELPLANE_TEST_DOCKER_HOST", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    with pytest.raises(DockerUnavailable, match="dockerd must run as root"):
        start_daemon()


@pytest.mark.parametrize(
    ("environ", "required"),
    [
        ({}, False),
        ({"MODELPLANE_TEST_REQUIRE_DOCKER": "1"}, True),
        ({"CI": "true"}, True),
        ({"CI": "1"}, True),
        ({"CI": "false"}, False),
        ({"CI": "true", "MODELPLANE_TEST_REQUIRE_DOCKER": "0"}, False),
        ({"CI": "", "MODELPLANE_TEST_REQUIRE_DOCKER": ""}, False),
    ],
)
def test_docker_tests_are_required_on_ci(environ, required):
    assert docker_required(environ) is required
