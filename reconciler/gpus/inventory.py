"""The GPU inventory: what NVML reports, merged with the Node manifest's static list.

NVML is read at the edge (:func:`read_nvml`, a few milliseconds of blocking calls; run it in a
thread from async code). Everything after that is pure: :func:`merge_inventory` applies
``Node.gpus``, and the renderers turn an :class:`Inventory` into a rich table, Prometheus gauges
and JSON. A box without an NVIDIA driver gets an empty inventory and one clear message, never an
exception, so the same binary runs the CPU quickstart and a GPU box.

Indices are NVML's, which follow PCI bus order. CUDA orders devices fastest-first unless
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` is set, so whoever sets ``CUDA_VISIBLE_DEVICES`` from a
placement must also set ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (see :data:`CUDA_ENV`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import pynvml
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.manifests.schema import StaticGpu

from .placement import free_bytes
from .types import Claim, GpuInfo, GpuProcess

# The environment that makes CUDA's device numbering match NVML's (and so the placement's).
CUDA_ENV: Mapping[str, str] = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


NodeGpus = Literal["auto", "none"] | Sequence[StaticGpu]


@dataclass(frozen=True)
class NvmlReading:
    """What one look at NVML gave: the GPUs, or why there are none."""

    gpus: tuple[GpuInfo, ...] = ()
    error: str | None = None
    driver: str | None = None


@dataclass(frozen=True)
class Inventory:
    """The GPUs modelplane may use, where the figures came from, and anything worth telling."""

    gpus: tuple[GpuInfo, ...] = ()
    source: Literal["nvml", "static", "nvml+static", "none"] = "none"
    messages: tuple[str, ...] = ()
    driver: str | None = None

    def get(self, index: int) -> GpuInfo | None:
        return next((g for g in self.gpus if g.index == index), None)

    @property
    def message(self) -> str | None:
        return "; ".join(self.messages) or None


# --- reading NVML (the only I/O here) ------------------------------------------------------------


def read_nvml(nvml: Any = pynvml) -> NvmlReading:
    """Read every GPU NVML sees. ``nvml`` is the pynvml module (a parameter only as a seam).

    Never raises for NVML's own errors: a missing library or driver becomes ``error``; a field one
    GPU does not support (utilisation on some boards, process memory in containers) becomes None.
    """
    try:
        nvml.nvmlInit()
    except nvml.NVMLError as exc:
        return NvmlReading(error=f"NVML is not available ({exc}): no NVIDIA driver or GPU here")
    try:
        driver = _optional(nvml, nvml.nvmlSystemGetDriverVersion)
        gpus: list[GpuInfo] = []
        errors: list[str] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                gpus.append(_read_device(nvml, index))
            except nvml.NVMLError as exc:
                errors.append(f"GPU {index}: {exc}")
        return NvmlReading(tuple(gpus), "; ".join(errors) or None, driver)
    except nvml.NVMLError as exc:
        return NvmlReading(error=f"NVML failed ({exc})")
    finally:
        _optional(nvml, nvml.nvmlShutdown)


def _read_device(nvml: Any, index: int) -> GpuInfo:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    mem = nvml.nvmlDeviceGetMemoryInfo(handle)
    util = _optional(nvml, nvml.nvmlDeviceGetUtilizationRates, handle)
    procs: dict[int, GpuProcess] = {}
    for getter in (
        nvml.nvmlDeviceGetComputeRunningProcesses,
        nvml.nvmlDeviceGetGraphicsRunningProcesses,
    ):
        for p in _optional(nvml, getter, handle) or ():
            name = _optional(nvml, nvml.nvmlSystemGetProcessName, p.pid) or ""
            procs.setdefault(p.pid, GpuProcess(int(p.pid), p.usedGpuMemory, str(name)))
    return GpuInfo(
        index=index,
        total=int(mem.total),
        free=int(mem.free),
        used=int(mem.used),
        uuid=str(_optional(nvml, nvml.nvmlDeviceGetUUID, handle) or ""),
        name=str(_optional(nvml, nvml.nvmlDeviceGetName, handle) or ""),
        utilization=None if util is None else int(util.gpu),
        temperature=_optional(
            nvml, nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
        ),
        processes=tuple(sorted(procs.values(), key=lambda p: p.pid)),
    )


def _optional(nvml: Any, fn: Any, *args: Any) -> Any:
    """Call an NVML function whose failure only costs one field."""
    try:
        return fn(*args)
    except nvml.NVMLError:
        return None


# --- merging with Node.gpus (pure) ---------------------------------------------------------------


def merge_inventory(node_gpus: NodeGpus, reading: NvmlReading) -> Inventory:
    """Apply ``Node.spec.gpus`` to what NVML saw.

    - ``none``: no GPUs, whatever NVML says.
    - ``auto``: NVML's GPUs; without NVML, none (and the message says why).
    - a static list without NVML: exactly those GPUs with their ``memory`` (an entry without
      ``memory`` cannot be used and is reported).
    - a static list with NVML: only the listed indices (NVML is the truth about which GPUs
      exist: a listed index NVML does not see is reported and left out); ``memory`` caps the
      GPU's total, and its free memory shrinks by what the cap hides.
    """
    if node_gpus == "none":
        return Inventory(
            (), "none", ("Node.gpus is none: modelplane uses no GPUs",), reading.driver
        )
    notes = [reading.error] if reading.error else []
    nvml_ok = reading.error is None or bool(reading.gpus)
    if node_gpus == "auto":
        if not nvml_ok:
            notes.append("no GPUs: models with gpus: auto run without a GPU")
        return Inventory(reading.gpus, "nvml" if nvml_ok else "none", tuple(notes), reading.driver)

    static = sorted({s.index: s for s in node_gpus}.values(), key=lambda s: s.index)
    if not nvml_ok:
        gpus = []
        for s in static:
            if s.memory is None:
                notes.append(f"GPU {s.index} in Node.gpus has no memory and NVML cannot tell it")
            else:
                gpus.append(
                    GpuInfo(index=s.index, total=s.memory, name=s.name or "", source="static")
                )
        notes.append("using the GPUs listed in Node.gpus")
        return Inventory(tuple(gpus), "static", tuple(notes), reading.driver)

    seen = {g.index: g for g in reading.gpus}
    gpus = []
    for s in static:
        gpu = seen.get(s.index)
        if gpu is None:
            visible = ", ".join(map(str, sorted(seen))) or "none"
            notes.append(f"GPU {s.index} in Node.gpus is not seen by NVML (NVML sees: {visible})")
        else:
            gpus.append(_cap(gpu, s.memory))
    return Inventory(tuple(gpus), "nvml+static", tuple(notes), reading.driver)


def _cap(gpu: GpuInfo, memory: int | None) -> GpuInfo:
    if memory is None or memory >= gpu.total:
        return gpu
    used = gpu.used if gpu.used is not None else gpu.total - (gpu.free or 0)
    free = max(0, min(gpu.free if gpu.free is not None else memory, memory - used))
    return replace(gpu, total=memory, free=free)


def read_inventory(node_gpus: NodeGpus = "auto", nvml: Any = pynvml) -> Inventory:
    """The inventory for a Node's ``gpus`` setting. ``none`` does not even load NVML."""
    reading = NvmlReading() if node_gpus == "none" else read_nvml(nvml)
    return merge_inventory(node_gpus, reading)


def probe_gpus() -> list[dict[str, Any]]:
    """This machine's GPUs as plain data (index, total bytes, name), for a cluster node: the
    ray runtime runs it once on each node with GPUs to learn their sizes. Empty without NVML."""
    return [
        {"index": g.index, "total": g.total, "name": g.name} for g in read_inventory("auto").gpus
    ]


def observed_usage(
    inventory: Inventory, pids: Mapping[str, Collection[int]]
) -> dict[tuple[str, int], int]:
    """NVML memory per (model, GPU index), from the pids each model's backend runs as.

    Feeds :attr:`Claim.observed`. Docker: pass the host pids of the container (``top()``);
    NVML reports host pids. Processes whose memory NVML cannot tell count as 0.
    """
    owner = {pid: model for model, ps in pids.items() for pid in ps}
    seen: dict[tuple[str, int], int] = {}
    for gpu in inventory.gpus:
        for p in gpu.processes:
            model = owner.get(p.pid)
            if model is not None:
                key = (model, gpu.index)
                seen[key] = seen.get(key, 0) + (p.used or 0)
    return seen


# --- renderers (pure) ----------------------------------------------------------------------------


def _claimed(claims: Sequence[Claim], index: int) -> list[Claim]:
    return sorted((c for c in claims if c.gpu == index), key=lambda c: c.model)


def gpu_metric_families(
    inventory: Inventory, claims: Sequence[Claim] = ()
) -> list[GaugeMetricFamily]:
    """Gauges for ``/metrics`` (yield them from a custom collector's ``collect()``).

    Figures NVML did not give (a static GPU's used/free) are left out rather than faked as 0.
    """
    labels = ["gpu", "uuid", "name"]

    def family(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"modelplane_gpu_{name}", doc, labels=labels)

    fams = {
        "total": family("memory_total_bytes", "GPU memory modelplane may use"),
        "used": family("memory_used_bytes", "GPU memory in use, as NVML reports it"),
        "free": family("memory_free_bytes", "GPU memory free, as NVML reports it"),
        "claimed": family("memory_claimed_bytes", "GPU memory claimed by modelplane's models"),
        "util": family("utilization_ratio", "GPU utilisation (0-1), as NVML reports it"),
        "temp": family("temperature_celsius", "GPU temperature"),
        "procs": family("processes", "Processes NVML lists on the GPU"),
    }
    for g in inventory.gpus:
        lv = [str(g.index), g.uuid, g.name]
        values: dict[str, float | None] = {
            "total": g.total,
            "used": g.used,
            "free": g.free,
            "claimed": sum(c.bytes for c in _claimed(claims, g.index)),
            "util": None if g.utilization is None else g.utilization / 100,
            "temp": g.temperature,
            "procs": len(g.processes) if g.source == "nvml" else None,
        }
        for key, value in values.items():
            if value is not None:
                fams[key].add_metric(lv, float(value))
    return list(fams.values())


class GpuCollector(Collector):
    """A Prometheus collector for ``/metrics``: :func:`gpu_metric_families` of ``snapshot()``
    (the service passes the inventory of its last pass and its claims; reading NVML on the
    scrape itself would block the event loop)."""

    def __init__(self, snapshot: Callable[[], tuple[Inventory, Sequence[Claim]]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from gpu_metric_families(*self._snapshot())


def inventory_json(
    inventory: Inventory, claims: Sequence[Claim] = (), reserve: int = 0
) -> dict[str, Any]:
    """The ``gpus`` part of ``/api/status`` and ``status --json``: each GPU with the claims on it
    and ``available``, what placement would see (:func:`~reconciler.gpus.placement.free_bytes`)."""
    return {
        "source": inventory.source,
        "driver": inventory.driver,
        "messages": list(inventory.messages),
        "reserve": reserve,
        "gpus": [
            {
                **asdict(g),
                "available": free_bytes(g, claims, reserve),
                "claims": [asdict(c) for c in _claimed(claims, g.index)],
            }
            for g in inventory.gpus
        ],
    }
