"""The ray runtime against a real local cluster: actors placed on the node asked for, engines
reachable from here, adoption by a second runtime, exits and deaths reported with their cause,
failed starts that leave nothing behind, and an unreachable cluster."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request
from typing import Any

import pytest

from reconciler.runtimes.base import LaunchSpec, NodeChoice, RuntimeUnavailable, StartError
from reconciler.runtimes.ray import RayRuntime
from reconciler.runtimes.ray_nodes import RayNode
from tests.helpers.backend import free_port
from tests.helpers.manifests import FAKEBACKEND

pytestmark = pytest.mark.slow


def fake_spec(model: str, *extra: str, node: NodeChoice | None = None) -> LaunchSpec:
    command = ("{python}", str(FAKEBACKEND), "--host", "{host}", "--port", "{port}")
    return LaunchSpec(
        model=model,
        spec_hash="h1",
        spec={"engine": "fake", "args": list(extra)},
        command=(*command, "--model-name", model, *extra),
        env={"FAKE_MARK": model},
        gpus=None,
        health_path="/health",
        startup_timeout=30,
        node=node,
    )


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


async def node_named(runtime: RayRuntime, name: str) -> RayNode:
    return next(n for n in await runtime.nodes() if n.name == name and n.alive)


async def wait_exited(runtime: RayRuntime, model: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {i.model: i for i in await runtime.list()}
        if model in found and found[model].state == "exited":
            return found[model]
        await asyncio.sleep(0.2)
    raise AssertionError(f"{model} did not exit within {timeout}s: {found.get(model)}")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


async def test_nodes_carry_names_labels_and_gpus(ray_runtime: RayRuntime) -> None:
    nodes = {n.name: n for n in await ray_runtime.nodes()}
    assert {"head", "worker-a", "worker-b"} <= set(nodes)
    head, worker = nodes["head"], nodes["worker-a"]
    assert head.head and head.gpus == () and not head.problem
    assert worker.labels["zone"] == "a" and worker.gpu_count == 2
    assert [(g.index, g.total) for g in worker.gpus] == [(0, 24 * 2**30), (1, 24 * 2**30)]
    assert worker.matches({"zone": "a"}) and not worker.matches({"zone": "b"})


async def test_a_model_runs_on_the_node_asked_for_and_stops(ray_runtime: RayRuntime) -> None:
    node = await node_named(ray_runtime, "worker-b")
    choice = NodeChoice(node.id, node.name, num_gpus=0.5)
    spec = fake_spec("m1", "--echo-env", "CUDA_VISIBLE_DEVICES", node=choice)
    instance = await ray_runtime.start(spec)
    assert instance.state == "running" and instance.node == "worker-b"
    assert instance.node_id == node.id and instance.gpus in ((0,), (1,))
    assert instance.endpoint and await ray_runtime.healthy(instance)
    models = get_json(instance.endpoint + "/v1/models")
    assert [m["id"] for m in models["data"]] == ["m1"]
    stats = get_json(instance.endpoint + "/debug/stats")
    assert stats["env"]["CUDA_VISIBLE_DEVICES"] == str(instance.gpus[0])  # Ray's GPU, given on

    listed = await ray_runtime.list()
    assert [(i.model, i.ident, i.node, i.labels["modelplane.spec-hash"]) for i in listed] == [
        ("m1", instance.ident, "worker-b", "h1")
    ]
    assert "--model-name m1" in await ray_runtime.logs("m1")

    engine_pid = stats["pid"]
    await ray_runtime.stop(instance, grace=5)
    assert await ray_runtime.list() == []
    assert not alive(engine_pid)


async def test_a_second_runtime_adopts_the_running_actor(
    ray_runtime: RayRuntime, ray_cluster: Any, namespace: str, tmp_path: Any
) -> None:
    first = await ray_runtime.start(fake_spec("adopted"))
    await ray_runtime.close()  # modelplane goes away; the detached actor stays
    again = RayRuntime(ray_cluster.address, namespace, log_dir=tmp_path / "logs2")
    try:
        (seen,) = await again.list()
        assert (seen.ident, seen.endpoint, seen.state) == (first.ident, first.endpoint, "running")
        assert seen.spec == first.spec and seen.started_at == first.started_at
        assert await again.healthy(seen)
        await again.stop(seen, grace=5)
        assert await again.list() == []
    finally:
        await again.close()


async def test_an_engine_that_exits_is_reported_at_once_with_its_log(
    ray_runtime: RayRuntime,
) -> None:
    changes: list[float] = []
    ray_runtime.on_change.append(lambda: changes.append(time.monotonic()))
    instance = await ray_runtime.start(fake_spec("crashy", "--crash-after", "1"))
    assert instance.endpoint
    urllib.request.urlopen(
        urllib.request.Request(
            instance.endpoint + "/v1/completions",
            data=json.dumps({"model": "crashy", "prompt": "hi"}).encode(),
            headers={"content-type": "application/json"},
        ),
        timeout=10,
    ).read()
    gone = await wait_exited(ray_runtime, "crashy")
    assert gone.ident == instance.ident and gone.endpoint is None
    assert "exited with code 3" in (gone.exit_reason or "")
    assert "fakebackend" in (gone.exit_reason or "")  # the log tail comes with it
    deadline = time.monotonic() + 10
    while not changes and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert changes, "the exit was not reported as a change"
    await ray_runtime.stop(gone)  # clean up after a crash: the record goes
    assert await ray_runtime.list() == []


async def test_a_killed_actor_takes_its_engine_along(ray_runtime: RayRuntime) -> None:
    await ray_runtime.start(fake_spec("victim"))
    (record,) = await ray_runtime.link.call("list", 10)
    os.kill(record["actor_pid"], signal.SIGKILL)
    gone = await wait_exited(ray_runtime, "victim")
    assert "the actor died on node" in (gone.exit_reason or "")
    deadline = time.monotonic() + 10
    while alive(record["pid"]) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert not alive(record["pid"]), "the engine outlived its actor"


async def test_a_failed_start_says_why_and_leaves_nothing(ray_runtime: RayRuntime) -> None:
    with pytest.raises(StartError) as failure:
        await ray_runtime.start(fake_spec("broken", "--exit-immediately", "7"))
    assert "exited with code 7 before becoming ready" in str(failure.value)
    assert "simulated failure" in str(failure.value)  # the engine's last log lines
    assert await ray_runtime.list() == []


async def test_a_node_that_cannot_take_the_actor_is_a_start_error(
    ray_runtime: RayRuntime,
) -> None:
    head = await node_named(ray_runtime, "head")  # no GPUs there
    spec = fake_spec("nowhere", node=NodeChoice(head.id, head.name, num_gpus=1))
    with pytest.raises(StartError, match=r"could not be created on node|did not create"):
        await ray_runtime.start(spec)
    assert await ray_runtime.list() == []


async def test_an_unreachable_cluster_is_unavailable_at_once(tmp_path: Any) -> None:
    port = free_port()  # nothing listens there
    runtime = RayRuntime(f"127.0.0.1:{port}", "x", log_dir=tmp_path)
    try:
        began = time.monotonic()
        with pytest.raises(RuntimeUnavailable, match=f"127.0.0.1:{port}.*refused"):
            await runtime.list()
        assert time.monotonic() - began < 30  # no minutes-long wait in ray.init
        with pytest.raises(RuntimeUnavailable):
            await runtime.list()  # backing off: answered at once from the last error
    finally:
        await runtime.close()
