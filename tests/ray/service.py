"""``modelplane run`` on the shared Ray cluster: manifests for it, and a box that cleans up its
actors (every one of its namespace) however a test ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reconciler.runtimes.ray import RayRuntime
from tests.helpers.manifests import ManifestDir, doc, fake_engine_doc, join
from tests.ray.cluster import LocalRayCluster
from tests.service.conftest import Box

#: The service talks to the test cluster as the cluster was started (no token auth), whatever
#: ~/.ray holds on this machine.
SERVICE_ENV = {"RAY_AUTH_MODE": "disabled"}


def ray_node_doc(address: str, namespace: str, **spec: Any) -> str:
    """A Node whose models run on the Ray cluster at ``address``; no GPUs on this box."""
    ray = {"address": address, "namespace": namespace, **spec.pop("ray", {})}
    return doc(
        "Node", "controller", {"runtime": "ray", "gpus": "none", "resync": "2s", "ray": ray, **spec}
    )


def ray_box(root: Path, address: str, namespace: str, *models: str, **node: Any) -> Box:
    manifests = ManifestDir(root / "manifests")
    manifests.write("node.yaml", ray_node_doc(address, namespace, **node))
    manifests.write("engine.yaml", fake_engine_doc("fake", "--echo-env", "CUDA_VISIBLE_DEVICES"))
    manifests.write("models.yaml", join(*models))
    return Box(manifests, root / "state")


@contextlib.contextmanager
def running_box(
    root: Path, cluster: LocalRayCluster, namespace: str, *models: str, **node: Any
) -> Iterator[Box]:
    """A box on the cluster (not started); afterwards its services stop and its actors go."""
    box = ray_box(root, cluster.address, namespace, *models, **node)
    try:
        yield box
    finally:
        box.stop_all()
        asyncio.run(stop_all(RayRuntime(cluster.address, namespace, root / "cleanup")))


async def stop_all(runtime: RayRuntime) -> None:
    """Stop every actor of the runtime's namespace, then its driver."""
    with contextlib.suppress(Exception):
        for instance in await runtime.list():
            with contextlib.suppress(Exception):
                await runtime.stop(instance, grace=2)
    await runtime.close()
