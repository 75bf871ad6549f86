"""Placement on a Ray cluster (reconciler/gpus/cluster.py): one node per model, the best fit
among the nodes that match its nodeSelector, the cheapest eviction across nodes, the reason
when nothing fits anywhere, and what Ray is asked for."""

from __future__ import annotations

from dataclasses import replace

from reconciler.gpus.cluster import Cluster, ray_gpus, schedule_cluster, schedule_everywhere
from reconciler.gpus.estimates import NOT_NEEDED
from reconciler.gpus.eviction import RunningModel
from reconciler.gpus.types import Claim, GpuInfo
from reconciler.gpus.vram import Estimate
from reconciler.planning.planner import Action, Placement
from reconciler.runtimes.ray_nodes import NodeGpu, RayNode
from reconciler.units import GiB
from tests.foundation.planning import desired, desired_model, instance


def node(name: str, gpus: int = 2, memory: int = 24, **labels: str) -> RayNode:
    return RayNode(
        id=f"id-{name}",
        name=name,
        ip="10.0.0.1",
        labels={"name": name, **labels},
        gpus=tuple(NodeGpu(i, memory * GiB) for i in range(gpus)),
        gpu_count=gpus,
        head=name == "head",
    )


HEAD = node("head", gpus=0)
A = node("worker-a", zone="a")
B = node("worker-b", zone="b")


def gib(n: float) -> Estimate:
    return Estimate(int(n * GiB), "spec.vram")


def ray_model(name: str, **spec: object):  # type: ignore[no-untyped-def]
    return desired_model(name, runtime="ray", **spec)


def start(name: str) -> Action:
    return Action("start", name, "requested")


def test_a_model_goes_to_the_best_fitting_node_that_matches_its_selector() -> None:
    m = ray_model("m", node_selector={"zone": "b"})
    state = desired(m)
    result = schedule_cluster(
        [start("m")], state, [], Cluster((HEAD, A, B)), 0, {}, {"m": gib(6)}, []
    )
    (action,) = result.actions
    assert action.node is not None and (action.node.name, action.node.node_id) == (
        "worker-b",
        "id-worker-b",
    )
    assert action.node.num_gpus == 0.25  # 6 of 24 GiB: Ray is told the share
    assert action.placement is not None and action.placement.gpus == (0,)
    assert result.nodes == {"m": "id-worker-b"}
    assert result.placed["m"].startswith("node worker-b: best fit")

    # best fit across nodes: worker-a already holds 20 GiB on GPU 0, so a 3 GiB model fits there
    others = {"big": (Claim("big", 0, 20 * GiB),)}
    small = ray_model("small")
    cluster = Cluster((HEAD, A, B), where={"big": A.id})
    result = schedule_cluster(
        [start("small")], desired(small), [], cluster, 0, others, {"small": gib(3)}, []
    )
    placement = result.actions[0].placement
    assert result.nodes == {"small": A.id} and placement is not None and placement.gpus == (0,)


def test_cpu_models_spread_over_workers_and_skip_the_head() -> None:
    models = [ray_model(n, gpus="none") for n in ("c1", "c2", "c3")]
    result = schedule_cluster(
        [start(m.name) for m in models],
        desired(*models),
        [],
        Cluster((HEAD, A, B)),
        0,
        {},
        dict.fromkeys(("c1", "c2", "c3"), NOT_NEEDED),
        [],
    )
    assert [result.nodes[n] for n in ("c1", "c2", "c3")] == [A.id, B.id, A.id]
    assert all(a.node and a.node.num_gpus == 0 for a in result.actions)


def test_nothing_fits_anywhere_says_why_for_every_node() -> None:
    huge = ray_model("huge", priority="low")
    result = schedule_cluster(
        [start("huge")], desired(huge), [], Cluster((HEAD, A, B)), 0, {}, {"huge": gib(60)}, []
    )
    reason = result.unschedulable["huge"]
    assert reason.startswith("no Ray node has room: ")
    assert "head: no GPUs" in reason and "worker-a: huge needs 60.0 GiB" in reason
    assert "worker-b:" in reason and result.actions == []

    nowhere = ray_model("nowhere", node_selector={"zone": "c"})
    result = schedule_cluster(
        [start("nowhere")], desired(nowhere), [], Cluster((HEAD, A, B)), 0, {}, {}, []
    )
    assert result.unschedulable["nowhere"] == (
        "no live Ray node matches nodeSelector zone=c (nodes: head, worker-a, worker-b)"
    )
    dead = Cluster((replace(A, alive=False),))
    result = schedule_cluster([start("m")], desired(ray_model("m")), [], dead, 0, {}, {}, [])
    assert result.unschedulable["m"] == "the Ray cluster has no live node"


def test_the_cheapest_eviction_across_nodes_makes_room() -> None:
    # Both nodes are full; worker-a holds a normal-priority model, worker-b a low one.
    held = {
        "na": (Claim("na", 0, 24 * GiB), Claim("na", 1, 24 * GiB)),
        "lb": (Claim("lb", 0, 24 * GiB), Claim("lb", 1, 24 * GiB)),
    }
    running = [
        RunningModel("na", held["na"], priority=2, last_used=1.0),
        RunningModel("lb", held["lb"], priority=1, last_used=5.0),
    ]
    new, na, lb = ray_model("new"), ray_model("na"), ray_model("lb", priority="low")
    actual = [replace(instance(na), runtime="ray"), replace(instance(lb), runtime="ray")]
    cluster = Cluster((HEAD, A, B), where={"na": A.id, "lb": B.id})
    result = schedule_cluster(
        [start("new")], desired(new, na, lb), actual, cluster, 0, held, {"new": gib(10)}, running
    )
    assert [(a.kind, a.model, a.cause) for a in result.actions] == [
        ("evict", "lb", "VRAM for new, priority low")
    ]
    assert result.waiting["new"].startswith("node worker-b: evict lb")
    # a pinned victim is never taken: then nothing can be evicted
    pinned = [replace(m, pinned=True) for m in running]
    result = schedule_cluster(
        [start("new")], desired(new, na, lb), actual, cluster, 0, held, {"new": gib(10)}, pinned
    )
    assert result.unschedulable["new"].endswith("nothing can be evicted")


def test_ray_is_asked_for_a_share_of_one_gpu_or_whole_gpus() -> None:
    gpus = (GpuInfo(0, 24 * GiB), GpuInfo(1, 24 * GiB))
    one = Placement((1,), (7 * GiB,))
    assert ray_gpus(one, gpus) == 0.29  # 7/24 = 0.2917, rounded down to a hundredth
    # what the policy packs onto one GPU by bytes fits in Ray's count of it as well
    thirds = [ray_gpus(Placement((0,), (8 * GiB,)), gpus) for _ in range(3)]
    assert sum(thirds) <= 1.0 and thirds[0] == 0.33
    spread = Placement((0, 1), (GiB, GiB), ("--tensor-split", "1,1"))
    assert ray_gpus(spread, gpus) == 2.0
    assert ray_gpus(Placement(), gpus) == 0.0


def test_local_and_cluster_models_are_scheduled_on_their_own_gpus() -> None:
    local, remote = desired_model("local"), ray_model("remote")
    state = desired(local, remote)
    box = (GpuInfo(0, 8 * GiB, source="static"),)
    # a claim on the cluster's GPU 0 must not count against this box's GPU 0
    claims = {"other": (Claim("other", 0, 20 * GiB),)}
    other = replace(instance("other"), runtime="ray", node_id=A.id)
    cluster = Cluster((A,), where={"other": A.id})
    result = schedule_everywhere(
        [start("local"), start("remote")],
        state,
        [other],
        box,
        0,
        claims,
        {"local": gib(6), "remote": gib(6)},
        [],
        cluster=cluster,
    )
    placed = {a.model: a for a in result.actions}
    local_gpus = placed["local"].placement.gpus if placed["local"].placement else None
    remote_gpus = placed["remote"].placement.gpus if placed["remote"].placement else None
    assert local_gpus == (0,) and placed["local"].node is None
    assert placed["remote"].node is not None and remote_gpus == (1,)
    assert result.nodes == {"remote": A.id}
