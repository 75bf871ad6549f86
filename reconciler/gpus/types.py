"""The small value types that the GPU inventory, the estimate, placement and eviction share.

They live apart from ``gpus.py`` so that the pure policy modules (``placement``, ``eviction``)
depend on plain data only, never on NVML or rich. Sizes are ints in bytes everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class GpuProcess:
    """A process NVML lists on a GPU. ``used`` is None where NVML cannot tell (containers, WDDM)."""

    pid: int
    used: int | None = None
    name: str = ""


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as modelplane sees it.

    ``free``/``used`` are NVML's figures, or None for a GPU that only the Node manifest lists
    (then only ``total`` is known and bookkeeping is by claims alone).
    """

    index: int
    total: int
    free: int | None = None
    used: int | None = None
    uuid: str = ""
    name: str = ""
    utilization: int | None = None  # percent, NVML's "gpu" utilisation rate
    temperature: int | None = None  # degrees Celsius
    processes: tuple[GpuProcess, ...] = ()
    source: Literal["nvml", "static"] = "nvml"


@dataclass(frozen=True)
class Claim:
    """VRAM that a model modelplane runs (or is starting) holds on one GPU.

    ``observed`` is what NVML attributes to that model's processes on that GPU (None when
    unknown, e.g. still loading or NVML cannot see the pids). It lets placement tell memory that
    is ours and already visible in NVML apart from memory that other processes use.
    """

    model: str
    gpu: int
    bytes: int
    observed: int | None = None
