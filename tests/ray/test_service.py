"""``modelplane run`` with ``runtime: ray`` against the real local cluster: models placed on the
nodes their selectors and the GPUs allow, woken on demand on another node, shown with their node
in status, /api/status, /metrics and the CLI; adopted after a restart; removed by ``down``; an
unreachable cluster as Unknown (and back); and a lost node's models rescheduled on a survivor.

The node-loss test runs last in this module: it kills a worker and starts it again."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.backend import free_port
from tests.helpers.cli import run_cli
from tests.helpers.manifests import model_doc
from tests.helpers.service import ServiceProcess
from tests.ray.cluster import LocalRayCluster
from tests.ray.conftest import cluster_env
from tests.ray.service import SERVICE_ENV, running_box
from tests.service.conftest import Box, wait_until

pytestmark = pytest.mark.slow

CHAT = {"messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}


def chat(box: Box, model: str) -> tuple[int, Any]:
    return box.svc.request("POST", "/v1/chat/completions", {"model": model, **CHAT}, timeout=90)


def healthz(svc: ServiceProcess) -> int | None:
    try:
        return svc.request("GET", "/healthz", timeout=2)[0]
    except OSError:
        return None


def events_text(box: Box, model: str) -> str:
    return "\n".join(f"{e['kind']}: {e['message']}" for e in box.svc.events(model))


def test_models_run_where_placement_puts_them_and_say_so(
    ray_cluster: LocalRayCluster, namespace: str, tmp_path: Path
) -> None:
    models = (
        model_doc("pinned-a", pin=True, vram="6GiB", nodeSelector={"zone": "a"}),
        model_doc("lazy-b", vram="12GiB", nodeSelector={"zone": "b"}),
        model_doc("nowhere", pin=True, vram="6GiB", nodeSelector={"zone": "c"}),
    )
    with running_box(tmp_path, ray_cluster, namespace, *models) as box:
        svc = box.start(env=SERVICE_ENV, timeout=90)
        pinned = svc.wait_phase("pinned-a", "Ready", timeout=90)
        assert pinned["node"] == "worker-a" and pinned["runtime"] == "ray"
        assert pinned["gpus"] in ([0], [1])  # Ray's GPU on that node, given to the engine
        nowhere = svc.wait_phase("nowhere", "Unschedulable", timeout=30)
        assert "no live Ray node matches nodeSelector zone=c" in nowhere["reason"]
        assert svc.model("lazy-b")["phase"] == "Asleep"

        code, reply = chat(box, "lazy-b")  # woken on demand, on the other node
        assert code == 200, reply
        assert reply["choices"][0]["message"]["content"].startswith("lazy-b@")
        lazy = svc.model("lazy-b")
        assert (lazy["phase"], lazy["node"]) == ("Ready", "worker-b")
        assert "on node worker-b" in events_text(box, "lazy-b")
        env = box.backend("lazy-b").stats()["env"]
        assert env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, lazy["gpus"]))

        cluster = svc.status()["cluster"]
        nodes = {n["name"]: n for n in cluster["nodes"]}
        assert nodes["worker-a"]["models"] == ["pinned-a"]
        assert nodes["worker-b"]["models"] == ["lazy-b"]
        assert nodes["worker-b"]["labels"]["zone"] == "b" and nodes["head"]["head"]
        claimed = sum(g["claimed"] for g in nodes["worker-b"]["gpus"])
        assert claimed == 12 * 2**30

        status, metrics = svc.request("GET", "/metrics")
        assert status == 200
        assert 'modelplane_model_node{model="pinned-a",node="worker-a"} 1.0' in metrics
        assert 'modelplane_model_node{model="lazy-b",node="worker-b"} 1.0' in metrics

        cli = run_cli(
            "status",
            "--dir",
            box.manifests.root,
            cwd=tmp_path,
            state_dir=box.state_dir,
            env=SERVICE_ENV,
            timeout=120,
        )
        assert cli.code == 0, cli.output
        header = next(line for line in cli.stdout.splitlines() if line.startswith("MODEL"))
        assert "NODE" in header.split()
        row = next(line for line in cli.stdout.splitlines() if line.startswith("pinned-a"))
        assert "worker-a" in row.split()


def test_a_restart_adopts_the_actors_and_down_removes_them(
    ray_cluster: LocalRayCluster, namespace: str, tmp_path: Path
) -> None:
    models = (model_doc("kept", pin=True, gpus="none"),)
    with running_box(tmp_path, ray_cluster, namespace, *models) as box:
        svc = box.start(env=SERVICE_ENV, timeout=90)
        before = svc.wait_phase("kept", "Ready", timeout=90)
        pid = box.backend("kept").pid
        assert svc.stop() == 0  # the actors stay: the next modelplane adopts them

        svc = box.start(env=SERVICE_ENV, timeout=90)
        after = svc.wait_phase("kept", "Ready", timeout=60)
        assert (after["endpoint"], after["node"]) == (before["endpoint"], before["node"])
        assert box.backend("kept").pid == pid  # the same engine, not a new one
        started = [e for e in box.events("kept") if e["kind"] == "Started"]
        assert len(started) == 1, started
        code, _ = chat(box, "kept")
        assert code == 200
        svc.stop()

        done = run_cli(
            "down",
            "--dir",
            box.manifests.root,
            cwd=tmp_path,
            state_dir=box.state_dir,
            env=SERVICE_ENV,
            timeout=120,
        )
        assert done.code == 0, done.output
        assert "stopped kept (ray " in done.stdout and f"on {before['node']}" in done.stdout
        assert "1 backend(s) stopped" in done.stdout
        status = run_cli(
            "status",
            "--dir",
            box.manifests.root,
            "--json",
            cwd=tmp_path,
            state_dir=box.state_dir,
            env=SERVICE_ENV,
            timeout=120,
        )
        (kept,) = [m for m in status.json()["models"] if m["name"] == "kept"]
        assert kept["endpoint"] is None and kept["node"] == ""


def test_plan_says_which_node_and_apply_starts_it_there(
    ray_cluster: LocalRayCluster, namespace: str, tmp_path: Path
) -> None:
    models = (model_doc("planned", pin=True, vram="6GiB", nodeSelector={"zone": "b"}),)
    with running_box(tmp_path, ray_cluster, namespace, *models) as box:

        def cli(*args: str | Path) -> Any:
            return run_cli(
                *args, cwd=tmp_path, state_dir=box.state_dir, env=SERVICE_ENV, timeout=120
            )

        directory = box.manifests.root
        plan = cli("plan", directory, "--json")
        assert plan.code == 2, plan.output  # changes pending
        placed = plan.json()["gpus"]["placements"]["planned"]
        assert (placed["node"], placed["numGpus"]) == ("worker-b", 0.25)
        assert placed["reason"].startswith("node worker-b: best fit")

        applied = cli("apply", directory)
        assert applied.code == 0, applied.output
        status = cli("status", "--dir", directory, "--json")
        assert status.code == 0, status.output
        (entry,) = [m for m in status.json()["models"] if m["name"] == "planned"]
        assert (entry["phase"], entry["node"]) == ("Ready", "worker-b")
        nodes = {n["name"]: n for n in status.json()["cluster"]["nodes"]}
        assert nodes["worker-b"]["models"] == ["planned"]
        assert cli("plan", directory).code == 0  # converged: nothing to do


def test_an_unreachable_cluster_is_unknown_and_the_rest_keeps_serving(
    namespace: str,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    ray_cluster: LocalRayCluster,  # (only so that this skips where Ray is not installed)
) -> None:
    port = free_port()  # the cluster modelplane is told about is not there (yet)
    models = (
        model_doc("far", pin=True, gpus="none"),
        model_doc("near", pin=True, gpus="none", runtime="process"),
    )
    address = f"127.0.0.1:{port}"
    # a short root: Ray's unix socket paths live below it
    late = LocalRayCluster(tmp_path_factory.mktemp("late"), env=cluster_env(), port=port)
    with running_box(tmp_path, late, namespace, *models) as box:
        try:
            svc = box.start(env=SERVICE_ENV, wait=False)  # /readyz will say 503
            wait_until(lambda: healthz(svc) == 200, 60, "listening")
            svc.wait_phase("near", "Ready", timeout=60)
            far = svc.wait_phase("far", "Unknown", timeout=60)
            assert "ray runtime unavailable" in far["reason"] and address in far["reason"]
            code, body = svc.request("GET", "/readyz")
            assert code == 503 and "ray" in str(body)
            assert chat(box, "near")[0] == 200  # the process model serves meanwhile

            late.start_head()  # the cluster comes (back): modelplane picks it up by itself
            entry = svc.wait_phase("far", "Ready", timeout=120)
            assert entry["node"] == "head"
            wait_until(lambda: svc.request("GET", "/readyz")[0] == 200, 30, "ready")
            assert chat(box, "far")[0] == 200
            kinds = [e["kind"] for e in svc.events()]
            assert "RuntimeUnavailable" in kinds and "RuntimeAvailable" in kinds
        finally:
            box.stop_all()
            late.stop()


def test_a_lost_node_s_models_are_rescheduled_on_a_survivor(
    ray_cluster: LocalRayCluster, namespace: str, tmp_path: Path
) -> None:
    models = (model_doc("survivor", pin=True, vram="6GiB"),)
    with running_box(tmp_path, ray_cluster, namespace, *models) as box:
        svc = box.start(env=SERVICE_ENV, timeout=90)
        first = svc.wait_phase("survivor", "Ready", timeout=90)
        lost = first["node"]
        assert lost in ("worker-a", "worker-b")
        try:
            began = time.monotonic()
            ray_cluster.kill_raylet(lost)
            entry = wait_until(
                lambda: (
                    (m := svc.model("survivor"))["phase"] == "Ready" and m["node"] != lost and m
                ),
                120,
                "rescheduled",
            )
            took = time.monotonic() - began
            print(f"\nrescheduled from {lost} to {entry['node']} in {took:.1f}s")
            assert entry["node"] in ("worker-a", "worker-b")
            assert f"node {lost} was lost" in events_text(box, "survivor")
            assert chat(box, "survivor")[0] == 200
            nodes = {n["name"]: n for n in svc.status()["cluster"]["nodes"] if not n["alive"]}
            assert lost in nodes
        finally:
            ray_cluster.restart_worker(lost)
