"""Ray nodes as modelplane sees them: names, labels, GPUs. Pure (the driver gathers the data).

A node's GPUs come from NVML on that node when it has an NVIDIA driver (probed once per node);
otherwise from Ray's ``GPU`` resource with the memory per GPU that the node's
``modelplane.io/gpu-memory`` label declares (``ray start --num-gpus 2 --labels
modelplane.io/gpu-memory=24GiB``): logical GPUs, for CPU boxes, tests and nodes without NVML.
A node with GPUs of unknown memory keeps them out of VRAM placement, and says why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.units import parse_size

NAME_LABEL = "name"  # ``ray start --labels name=gpu-a``: what status shows as the node
GPU_MEMORY_LABEL = "modelplane.io/gpu-memory"  # memory per GPU where NVML cannot tell
HEAD_RESOURCE = "node:__internal_head__"


@dataclass(frozen=True)
class NodeGpu:
    """One GPU of a node: Ray's index for it and its memory (NVML's, or the label's)."""

    index: int
    total: int
    name: str = ""
    declared: bool = False  # from the label, not NVML


@dataclass(frozen=True)
class RayNode:
    id: str
    name: str
    ip: str
    alive: bool = True
    labels: Mapping[str, str] = field(default_factory=dict)
    gpus: tuple[NodeGpu, ...] = ()
    gpu_count: int = 0  # Ray's GPU resource
    head: bool = False
    problem: str = ""  # why its GPUs cannot be used for placement
    death: str = ""  # Ray's reason, for a node that died

    def matches(self, selector: Mapping[str, str]) -> bool:
        """Does every ``key: value`` of a Model's ``nodeSelector`` hold for this node?"""
        return all(self.labels.get(k) == v for k, v in selector.items())


def node_names(raw: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """node id → the name modelplane shows: its ``name`` label, else its IP, with the start of
    its id when several nodes share that IP (several raylets on one machine)."""
    per_ip = Counter(n.get("ip", "") for n in raw)
    names = {}
    for n in raw:
        label = (n.get("labels") or {}).get(NAME_LABEL)
        ip = n.get("ip", "")
        names[n["id"]] = label or (f"{ip}/{n['id'][:6]}" if per_ip[ip] > 1 else ip)
    return names


def parse_nodes(raw: Sequence[Mapping[str, Any]]) -> list[RayNode]:
    """The driver's node records (Ray's ``ray.nodes()`` plus NVML probes) as :class:`RayNode`."""
    names = node_names(raw)
    nodes = []
    for n in raw:
        resources = n.get("resources") or {}
        labels = dict(n.get("labels") or {})
        count = int(resources.get("GPU", 0))
        gpus, problem = node_gpus(n.get("gpus") or [], count, labels)
        nodes.append(
            RayNode(
                id=n["id"],
                name=names[n["id"]],
                ip=n.get("ip", ""),
                alive=bool(n.get("alive", True)),
                labels=labels,
                gpus=gpus,
                gpu_count=count,
                head=HEAD_RESOURCE in resources,
                problem=problem,
                death=n.get("death", ""),
            )
        )
    return sorted(nodes, key=lambda node: node.name)


def node_gpus(
    probed: Sequence[Mapping[str, Any]], count: int, labels: Mapping[str, str]
) -> tuple[tuple[NodeGpu, ...], str]:
    """A node's GPUs for placement, and the problem when they cannot be used.

    NVML's list wins (cut to the ``count`` GPUs Ray manages there); else ``count`` logical GPUs
    of the labelled memory. Bookkeeping on a Ray node is by claims (no ``free`` figure): Ray's
    node does not report other processes' GPU memory to the controller.
    """
    if count <= 0:
        return (), ""
    if probed:
        gpus = [
            NodeGpu(index=int(g["index"]), total=int(g["total"]), name=str(g.get("name", "")))
            for g in probed
        ]
        return tuple(sorted(gpus, key=lambda g: g.index)[:count]), ""
    declared = labels.get(GPU_MEMORY_LABEL)
    if not declared:
        return (), (
            f"{count} GPU(s) of unknown memory: no NVML there; label the node "
            f"{GPU_MEMORY_LABEL}=<size> (ray start --labels {GPU_MEMORY_LABEL}=24GiB)"
        )
    try:
        memory = parse_size(declared)
    except ValueError as exc:
        return (), f"label {GPU_MEMORY_LABEL}={declared!r}: {exc}"
    return tuple(NodeGpu(index=i, total=memory, declared=True) for i in range(count)), ""
