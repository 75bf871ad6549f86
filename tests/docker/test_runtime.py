"""DockerRuntime against a real dockerd, running the fake backend in the imported test image."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from pathlib import Path

import docker
import docker.errors
import httpx
import pytest

from reconciler.runtimes.base import ContainerOptions, Instance, StartError
from reconciler.runtimes.docker import (
    BRIDGE_PORT,
    SPEC_LABEL,
    DockerRuntime,
    ImageNotPresent,
    PermanentStartError,
    PullProgress,
    container_kwargs,
)
from tests.docker.manifests import TESTS_DIR
from tests.docker.registry import Registry
from tests.docker_env import IMAGE, TEST_LABEL
from tests.helpers.backend import FAKEBACKEND


def chat(endpoint: str, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}]}
    reply = httpx.post(f"{endpoint}/v1/chat/completions", json=body, timeout=10, trust_env=False)
    assert reply.status_code == 200, reply.text
    return reply.json()["choices"][0]["message"]["content"]


def names(client: docker.DockerClient) -> set[str]:
    return {c.name for c in client.containers.list(all=True)}


async def test_start_answers_on_loopback_then_stop_removes(runtime, make_spec, docker_client):
    spec = make_spec("tiny")
    instance = await runtime.start(spec)

    assert instance.state == "running" and instance.model == "tiny"
    assert instance.endpoint.startswith("http://127.0.0.1:")
    assert "tiny" in chat(instance.endpoint, "tiny")
    assert await runtime.healthy(instance)
    assert "listening on http://127.0.0.1:" in await runtime.logs("tiny")

    attrs = docker_client.api.inspect_container(instance.ident)
    assert attrs["Name"] == "/modelplane-tiny"
    assert attrs["HostConfig"]["NetworkMode"] == "host"
    labels = attrs["Config"]["Labels"]
    assert {k: labels[k] for k in spec.labels} == spec.labels
    assert json.loads(labels[SPEC_LABEL]) == spec.spec
    mounts = [(m["Source"], m["Destination"], m["RW"]) for m in attrs["Mounts"]]
    assert mounts == [(str(TESTS_DIR), str(TESTS_DIR), False)]

    await runtime.stop(instance, grace=5)
    assert await runtime.list() == []
    assert "modelplane-tiny" not in names(docker_client)
    assert not await runtime.healthy(instance)


async def test_unlabelled_containers_are_never_touched(runtime, make_spec, docker_client):
    strangers = [
        docker_client.containers.run(
            IMAGE,
            ["sleep", "300"],
            name=name,
            labels={TEST_LABEL: "true", "modelplane.model": "foo", **extra},
            network_mode="none",
            init=True,
            detach=True,
        )
        for name, extra in [("modelplane-foo", {}), ("modelplane-bar", {"modelplane.managed": "x"})]
    ]
    mine = await runtime.start(make_spec("tiny"))

    assert [i.ident for i in await runtime.list()] == [mine.ident]
    forged = Instance(model="foo", runtime="docker", ident=strangers[0].id, state="running")
    await runtime.stop(forged, grace=0)
    assert await runtime.logs("foo") == ""
    with pytest.raises(PermanentStartError, match="modelplane-foo exists and is not managed"):
        await runtime.start(make_spec("foo"))

    for stranger in strangers:
        stranger.reload()
        assert stranger.status == "running"
    assert docker_client.containers.get("modelplane-foo").id == strangers[0].id


async def test_a_new_runtime_adopts_the_running_container(runtime, make_spec, docker_daemon):
    started = await runtime.start(make_spec("tiny", "--tokens", "3"))

    adopted = await DockerRuntime(docker_daemon.host).list()

    assert len(adopted) == 1
    (instance,) = adopted
    assert instance.ident == started.ident
    assert instance.endpoint == started.endpoint
    assert instance.started_at == started.started_at > 0
    assert instance.spec == started.spec == {"engine": "fake", "args": ["--tokens", "3"]}
    assert instance.spec_hash == "h1" and instance.state == "running"
    assert await DockerRuntime(docker_daemon.host).healthy(instance)
    assert "tiny" in chat(instance.endpoint, "tiny")


async def test_a_crash_at_start_raises_with_the_log_tail(runtime, make_spec, docker_client):
    with pytest.raises(StartError) as caught:
        await runtime.start(make_spec("tiny", "--exit-immediately", "7"))

    assert "exited with code 7 before it became healthy" in caught.value.message
    assert "FATAL: failed to load model 'tiny'" in caught.value.log_tail
    assert "modelplane-tiny" not in names(docker_client)


async def test_a_start_that_never_gets_healthy_times_out(runtime, make_spec, docker_client):
    spec = make_spec("tiny", "--fail-health", startup_timeout=1.0)

    with pytest.raises(StartError, match=r"/health did not answer 200 within 1s") as caught:
        await runtime.start(spec)

    assert "listening on" in caught.value.log_tail
    assert "modelplane-tiny" not in names(docker_client)


async def test_image_pull_never_with_a_missing_image_is_a_clear_permanent_error(
    runtime, make_spec, docker_client
):
    spec = make_spec(
        "tiny", image="modelplane-test/missing:1", container=ContainerOptions(image_pull="Never")
    )

    with pytest.raises(ImageNotPresent) as caught:
        await runtime.start(spec)

    assert str(caught.value) == "image modelplane-test/missing:1 not present and imagePull is Never"
    assert isinstance(caught.value, PermanentStartError)
    assert "modelplane-tiny" not in names(docker_client)


async def test_a_missing_image_is_pulled_with_progress(docker_daemon, docker_client):
    seen: list[PullProgress] = []
    runtime = DockerRuntime(docker_daemon.host, on_pull=seen.append)
    with Registry() as registry:
        image = f"{registry.host}/modelplane-test/tiny:1"
        try:
            await runtime.ensure_image(image, "IfNotPresent", "m")

            assert seen[0] == PullProgress("m", image, "pulling")
            assert (seen[-1].status, seen[-1].layers_done, seen[-1].layers_total) == ("done", 1, 1)
            docker_client.images.get(image)
            pulls = registry.manifest_requests
            await runtime.ensure_image(image, "IfNotPresent", "m")
            assert registry.manifest_requests == pulls  # present: not pulled again
            await runtime.ensure_image(image, "Always", "m")
            assert registry.manifest_requests > pulls
        finally:
            docker_client.images.remove(image, force=True)


async def test_pulls_report_progress_and_fall_back_to_a_local_image(
    docker_daemon, make_spec, docker_client
):
    seen: list[PullProgress] = []
    runtime = DockerRuntime(docker_daemon.host, on_pull=seen.append)
    # a registry that refuses connections at once (nothing listens on port 9)
    local = "127.0.0.1:9/modelplane-test/python:bookworm"
    docker_client.images.get(IMAGE).tag(local)
    try:
        missing = make_spec("tiny", image="127.0.0.1:9/modelplane-test/missing:1")
        with pytest.raises(StartError, match=re.escape(f"pulling image {missing.image} failed")):
            await runtime.start(missing)
        assert [p.status for p in seen] == ["pulling", "failed"]

        seen.clear()
        always = make_spec("tiny", image=local, container=ContainerOptions(image_pull="Always"))
        instance = await runtime.start(always)
        assert [p.status for p in seen] == ["pulling", "failed", "using local image"]
        assert "tiny" in chat(instance.endpoint, "tiny")
        await runtime.stop(instance, grace=5)
    finally:
        docker_client.images.remove(local)


async def test_bridge_network_publishes_on_loopback_only(runtime, make_spec, docker_daemon):
    spec = make_spec("tiny", container=ContainerOptions(network="bridge"))

    instance = await runtime.start(spec)

    assert instance.endpoint.startswith("http://127.0.0.1:")
    assert "tiny" in chat(instance.endpoint, "tiny")
    attrs = docker_daemon.client().api.inspect_container(instance.ident)
    assert attrs["HostConfig"]["NetworkMode"] == "modelplane"
    assert attrs["HostConfig"]["PortBindings"] == {
        f"{BRIDGE_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]
    }
    published = attrs["NetworkSettings"]["Ports"][f"{BRIDGE_PORT}/tcp"]
    assert {b["HostIp"] for b in published} == {"127.0.0.1"}
    (adopted,) = await DockerRuntime(docker_daemon.host).list()
    assert adopted.endpoint == instance.endpoint


async def test_gpus_become_device_requests(runtime, make_spec, docker_client):
    spec = make_spec("gpu", gpus=(0, 1))
    created = docker_client.containers.create(**container_kwargs(spec, 8000, "modelplane"))
    requests = docker_client.api.inspect_container(created.id)["HostConfig"]["DeviceRequests"]
    assert requests == [
        {
            "Driver": "",
            "Count": 0,
            "DeviceIDs": ["0", "1"],
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    created.remove()

    none = docker_client.containers.create(
        **container_kwargs(dataclasses.replace(spec, gpus=None), 8000, "modelplane")
    )
    assert not docker_client.api.inspect_container(none.id)["HostConfig"]["DeviceRequests"]
    none.remove()

    # this daemon has no NVIDIA runtime: docker refuses to start it, and says why
    with pytest.raises(StartError, match=r"the container did not start: .*device driver"):
        await runtime.start(spec)
    assert "modelplane-gpu" not in names(docker_client)


async def test_container_options_reach_the_container(runtime, make_spec, docker_client, tmp_path):
    # an unprivileged user must read the script: copy it where anyone can (the checkout may not be)
    public = Path(tempfile.mkdtemp(prefix="mp-public-", dir="/tmp"))
    try:
        public.chmod(0o755)
        script = public / "fakebackend.py"
        shutil.copy(FAKEBACKEND, script)
        script.chmod(0o644)
        options = ContainerOptions(
            shm_size=64 * 2**20,
            memory=512 * 2**20,
            user="65534:65534",
            volumes=(f"{tmp_path}:/scratch:ro",),
            extra_args={"ulimits": [{"name": "nofile", "soft": 1024, "hard": 2048}]},
        )
        spec = make_spec("tiny", container=options, mounts=(str(public),))
        command = ("python3", str(script), *spec.command[2:])
        instance = await runtime.start(dataclasses.replace(spec, command=command))

        host_config = docker_client.api.inspect_container(instance.ident)["HostConfig"]
        assert host_config["ShmSize"] == 64 * 2**20
        assert host_config["Memory"] == 512 * 2**20
        assert host_config["Binds"] == [f"{tmp_path}:/scratch:ro"]
        assert host_config["Ulimits"] == [{"Name": "nofile", "Soft": 1024, "Hard": 2048}]
        container = docker_client.containers.get(instance.ident)
        assert container.exec_run(["id", "-u"]).output.strip() == b"65534"
        assert "tiny" in chat(instance.endpoint, "tiny")
    finally:
        shutil.rmtree(public)


async def test_start_replaces_an_exited_managed_container(runtime, make_spec, docker_client):
    first = await runtime.start(make_spec("tiny"))
    docker_client.containers.get(first.ident).kill()

    second = await runtime.start(make_spec("tiny", spec_hash="h2"))

    assert second.ident != first.ident and second.spec_hash == "h2"
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(first.ident)
    assert [i.ident for i in await runtime.list()] == [second.ident]


async def test_stop_kills_a_backend_that_ignores_sigterm_after_the_grace(
    runtime, make_spec, docker_client
):
    instance = await runtime.start(make_spec("stubborn", "--ignore-sigterm"))

    await runtime.stop(instance, grace=1)

    assert "modelplane-stubborn" not in names(docker_client)
    assert await runtime.list() == []
