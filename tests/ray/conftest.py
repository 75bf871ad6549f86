"""Fixtures for the Ray tests: one real local cluster per session, a runtime per test.

The cluster is a head plus two worker nodes (``worker-a`` in zone a, ``worker-b`` in zone b, two
logical GPUs of 24 GiB each), every node its own ``ray start`` process (see
:mod:`tests.ray.cluster`). It starts once, on first use (about 20 s on two cores), and is torn
down at the end of the session. Each test works in a Ray namespace of its own, so the actors of
one test never meet another's on the shared cluster.

Every test here is marked ``ray`` (``-m ray`` selects them). Without Ray installed they skip
with the reason; with ``MODELPLANE_TEST_REQUIRE_RAY`` set (CI sets it) that is a failure.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from reconciler.gpus.inventory import probe_gpus
from reconciler.runtimes.ray import RayRuntime
from tests.helpers.manifests import REPO
from tests.ray.cluster import ClusterError, LocalRayCluster
from tests.ray.service import stop_all

HERE = Path(__file__).resolve().parent
_namespaces = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(item.fspath).parents:
            item.add_marker(pytest.mark.ray)


def ray_required() -> bool:
    return os.environ.get("MODELPLANE_TEST_REQUIRE_RAY", "") not in ("", "0")


def _unavailable(reason: str) -> None:
    if ray_required():
        pytest.fail(f"ray tests required (MODELPLANE_TEST_REQUIRE_RAY) but {reason}", pytrace=False)
    pytest.skip(reason)


def cluster_env() -> dict[str, str]:
    """What every node runs with: this checkout first on the path (the actors import
    ``reconciler`` from it), as a real node would have modelplane installed."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": path}


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRayCluster]:
    try:
        import ray  # noqa: F401
    except ImportError:
        _unavailable("ray is not installed (pip install 'modelplane[ray]')")
    cluster = LocalRayCluster(tmp_path_factory.mktemp("ray"), env=cluster_env())
    try:
        cluster.start_head()
        for name, zone in (("worker-a", "a"), ("worker-b", "b")):
            cluster.add_worker(name, labels={"zone": zone}, wait=False)
        for name in ("worker-a", "worker-b"):
            cluster.wait_started(name)
    except ClusterError as exc:
        cluster.stop()
        _unavailable(f"the local Ray cluster did not start: {exc}")
    yield cluster
    cluster.stop()


@pytest.fixture
def namespace() -> str:
    """A Ray namespace of this test's own (actors are named by model within it)."""
    return f"modelplane-test-{os.getpid()}-{next(_namespaces)}"


@pytest.fixture
async def ray_runtime(
    ray_cluster: LocalRayCluster, namespace: str, tmp_path: Path
) -> AsyncIterator[RayRuntime]:
    """A Ray runtime on the shared cluster; whatever a test leaves running is stopped after."""
    logs = tmp_path / "logs"
    runtime = RayRuntime(ray_cluster.address, namespace, log_dir=logs, probe=probe_gpus)
    yield runtime
    await stop_all(runtime)
