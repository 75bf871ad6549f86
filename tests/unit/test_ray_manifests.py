"""The Ray runtime's manifest fields and the pure pieces around it: ``Node.ray``,
``Model.nodeSelector``, what a Ray model may not ask for, node names and GPUs from Ray's view,
an actor's description as an Instance, and a launch whose weights are fetched on the node."""

from __future__ import annotations

from pathlib import Path

from reconciler.gpus.estimates import NOT_NEEDED, estimate_all, missing
from reconciler.gpus.vram import Estimate
from reconciler.manifests import manifest_set
from reconciler.planning.desired import build_desired
from reconciler.planning.launch import launch_spec
from reconciler.runtimes.ray import instance_of
from reconciler.runtimes.ray_nodes import GPU_MEMORY_LABEL, NodeGpu, node_names, parse_nodes
from tests.helpers.manifests import ManifestDir, doc, fake_engine_doc, model_doc

GiB = 2**30
RAY = {"runtime": "ray", "gpus": "none", "ray": {"address": "head:6379"}}


def load(tmp_path: Path, *docs: str) -> manifest_set.ManifestSet:
    manifests = ManifestDir(tmp_path / "m")
    manifests.write("all.yaml", *docs)
    return manifest_set.load(manifests.root)


def errors(tmp_path: Path, *docs: str) -> list[str]:
    return [e.message for e in load(tmp_path, *docs).errors]


def test_a_ray_node_and_a_model_with_a_node_selector(tmp_path: Path) -> None:
    found = load(
        tmp_path,
        doc("Node", "n", RAY),
        fake_engine_doc(),
        model_doc("m", nodeSelector={"zone": "a"}, vram="6GiB"),
    )
    assert found.errors == []
    desired = build_desired(found)
    model = desired.models["m"]
    assert model.runtime == "ray" and model.spec.node_selector == {"zone": "a"}
    assert model.effective["nodeSelector"] == {"zone": "a"}  # moving it is a new spec
    assert desired.node.ray is not None and desired.node.ray.namespace == "modelplane"


def test_what_a_ray_model_cannot_ask_for_is_an_error_at_the_model(tmp_path: Path) -> None:
    assert errors(tmp_path, doc("Node", "n", RAY), fake_engine_doc(), model_doc("m", gpus=[0])) == [
        "explicit GPU indices do not apply on a Ray cluster (Ray assigns the GPUs on the node "
        "placement chooses): use gpus: auto, and nodeSelector to choose nodes"
    ]
    assert errors(
        tmp_path / "2", fake_engine_doc(), model_doc("m", nodeSelector={"zone": "a"})
    ) == ["nodeSelector applies to the ray runtime only (this model runs on process)"]
    assert errors(tmp_path / "3", fake_engine_doc(), model_doc("m", runtime="ray")) == [
        "runtime ray needs Node.spec.ray.address (the cluster to run on)"
    ]
    node = errors(tmp_path / "4", doc("Node", "n", {"runtime": "ray"}))
    assert node and "runtime: ray needs ray.address" in node[0]
    bad = errors(tmp_path / "5", doc("Node", "n", {"ray": {"address": "http://head"}}))
    assert bad and "address" in bad[0]


def test_node_names_labels_first_then_ips_made_unique() -> None:
    raw = [
        {"id": "aaaaaaaa1", "ip": "10.0.0.1", "labels": {"name": "gpu-a"}},
        {"id": "bbbbbbbb2", "ip": "10.0.0.2", "labels": {}},
        {"id": "cccccccc3", "ip": "10.0.0.3", "labels": {}},
        {"id": "dddddddd4", "ip": "10.0.0.3", "labels": {}},  # two raylets on one machine
    ]
    assert node_names(raw) == {
        "aaaaaaaa1": "gpu-a",
        "bbbbbbbb2": "10.0.0.2",
        "cccccccc3": "10.0.0.3/cccccc",
        "dddddddd4": "10.0.0.3/dddddd",
    }


def test_a_node_s_gpus_from_nvml_or_the_label_or_a_reason() -> None:
    nodes = parse_nodes(
        [
            {
                "id": "h",
                "ip": "1",
                "labels": {"name": "head"},
                "resources": {"CPU": 4, "node:__internal_head__": 1},
            },
            {  # NVML on the node: its sizes, as many GPUs as Ray manages there
                "id": "n",
                "ip": "2",
                "labels": {"name": "nvml"},
                "resources": {"GPU": 1},
                "gpus": [{"index": 0, "total": 80 * GiB, "name": "H100"}, {"index": 1, "total": 1}],
            },
            {
                "id": "l",
                "ip": "3",
                "labels": {"name": "logical", GPU_MEMORY_LABEL: "24GiB"},
                "resources": {"GPU": 2},
            },
            {"id": "u", "ip": "4", "labels": {"name": "unknown"}, "resources": {"GPU": 2}},
        ]
    )
    by_name = {n.name: n for n in nodes}
    assert by_name["head"].head and by_name["head"].gpus == ()
    assert by_name["nvml"].gpus == (NodeGpu(0, 80 * GiB, "H100"),)
    assert by_name["logical"].gpus == (
        NodeGpu(0, 24 * GiB, declared=True),
        NodeGpu(1, 24 * GiB, declared=True),
    )
    assert by_name["unknown"].gpus == () and GPU_MEMORY_LABEL in by_name["unknown"].problem


def test_an_actor_description_as_an_instance() -> None:
    running = instance_of(
        {
            "model": "m",
            "actor_id": "abc",
            "state": "running",
            "labels": {"modelplane.managed": "true"},
            "endpoint": "http://10.0.0.2:4000",
            "gpus": [1],
            "node": "gpu-a",
            "node_id": "n1",
            "started_at": 5.0,
        }
    )
    assert (running.ident, running.state, running.endpoint, running.gpus) == (
        "abc",
        "running",
        "http://10.0.0.2:4000",
        (1,),
    )
    assert (running.node, running.node_id, running.managed) == ("gpu-a", "n1", True)
    gone = instance_of({"model": "m", "state": "exited", "detail": "node gpu-a was lost (x)"})
    assert gone.state == "exited" and gone.exit_reason == "node gpu-a was lost (x)"
    assert gone.endpoint is None
    silent = instance_of({"model": "m", "state": "unknown"})  # did not answer in time
    assert silent.state == "starting" and silent.endpoint is None


def test_a_remote_launch_leaves_the_node_its_own_placeholders(tmp_path: Path) -> None:
    engine = doc("Engine", "e", {"command": ["srv", "{model_path}", "{model_dir}", "{gpus}"]})
    hub = doc(
        "Model",
        "hub",
        {"source": {"huggingface": {"repo": "org/x"}}, "engine": "e", "nodeSelector": {"a": "b"}},
    )
    found = load(tmp_path, doc("Node", "n", RAY), engine, hub, model_doc("local", engine="e"))
    desired = build_desired(found, {"hub": "0" * 40})
    remote = launch_spec(desired.models["hub"], 1, (0,), None, remote=True)
    assert remote.command == ("srv", "{model_path}", "{model_dir}", "{gpus}")
    assert remote.mounts == ()
    on_path = launch_spec(desired.models["local"], 1, (0,), None, remote=True)
    assert on_path.command == ("srv", "/srv/models/local.gguf", "/srv/models", "{gpus}")


def test_a_model_that_needed_no_gpu_is_estimated_again_once_gpus_are_known(
    tmp_path: Path,
) -> None:
    """A cluster read before its GPU workers joined (or unreachable at start) has no GPUs: a
    ``gpus: auto`` model then needs no estimate, but only until GPUs show up."""
    found = load(
        tmp_path,
        doc("Node", "n", RAY),
        fake_engine_doc(),
        model_doc("auto", gpus="auto", vram="6GiB"),
        model_doc("cpu", gpus="none"),
    )
    desired = build_desired(found)
    no_path = lambda _model: None  # noqa: E731
    estimates = estimate_all(desired, no_path, gpu_box=False)
    assert estimates == {"auto": NOT_NEEDED, "cpu": NOT_NEEDED}
    assert missing(estimates, desired) == ["auto"]  # looked at again: GPUs may have joined
    estimates |= estimate_all(desired, no_path, only=["auto"], gpu_box=True)
    assert isinstance(estimates["auto"], Estimate) and estimates["auto"].bytes == 6 * GiB
    assert missing(estimates, desired) == []
