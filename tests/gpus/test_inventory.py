"""The inventory: the real no-NVML path of this machine, Node.gpus merging, and the renderers
(the CLI's table is drawn from the same JSON /api/status serves)."""

from __future__ import annotations

import json

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from reconciler.cli.views import gpu_table
from reconciler.gpus.inventory import (
    Inventory,
    NvmlReading,
    gpu_metric_families,
    inventory_json,
    merge_inventory,
    observed_usage,
    read_inventory,
    read_nvml,
)
from reconciler.gpus.types import Claim, GpuInfo, GpuProcess
from reconciler.manifests.schema import StaticGpu
from reconciler.units import GiB


def _nvml_works() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


NVML = _nvml_works()
needs_no_nvml = pytest.mark.skipif(NVML, reason="this machine has a working NVML")
needs_nvml = pytest.mark.skipif(not NVML, reason="no NVIDIA driver on this machine")


@needs_no_nvml
def test_without_nvml_auto_is_empty_with_one_clear_message() -> None:
    reading = read_nvml()
    assert reading.gpus == ()
    assert reading.error is not None and reading.error.startswith("NVML is not available")
    inv = read_inventory("auto")
    assert inv.gpus == () and inv.source == "none"
    assert "NVML is not available" in inv.message
    assert "run without a GPU" in inv.message


@needs_no_nvml
def test_without_nvml_the_static_list_is_the_inventory() -> None:
    listed = [
        StaticGpu(index=1, memory="24GiB", name="RTX 4090"),
        StaticGpu(index=0, memory=16 * GiB),
        StaticGpu(index=2),
    ]
    inv = read_inventory(listed)
    assert inv.source == "static"
    assert [(g.index, g.total, g.free, g.name, g.source) for g in inv.gpus] == [
        (0, 16 * GiB, None, "", "static"),
        (1, 24 * GiB, None, "RTX 4090", "static"),
    ]
    assert "GPU 2 in Node.gpus has no memory" in inv.message
    assert "using the GPUs listed in Node.gpus" in inv.message


def test_none_never_touches_nvml() -> None:
    inv = read_inventory("none", nvml=object())  # any NVML call would raise AttributeError
    assert inv == Inventory((), "none", ("Node.gpus is none: modelplane uses no GPUs",))


def _nvml_gpu(index: int, total: int, used: int) -> GpuInfo:
    return GpuInfo(index=index, total=total, free=total - used, used=used, uuid=f"GPU-{index}")


def test_static_list_restricts_and_caps_what_nvml_sees() -> None:
    reading = NvmlReading(
        (_nvml_gpu(0, 80 * GiB, 10 * GiB), _nvml_gpu(1, 80 * GiB, 0)), None, "560"
    )
    listed = [StaticGpu(index=1, memory=40 * GiB), StaticGpu(index=3, memory=24 * GiB)]
    inv = merge_inventory(listed, reading)
    assert inv.source == "nvml+static"
    assert [g.index for g in inv.gpus] == [1]
    assert (inv.gpus[0].total, inv.gpus[0].free) == (40 * GiB, 40 * GiB)
    assert inv.message == "GPU 3 in Node.gpus is not seen by NVML (NVML sees: 0, 1)"
    capped = merge_inventory([StaticGpu(index=0, memory=40 * GiB)], reading).gpus[0]
    assert (capped.total, capped.free) == (40 * GiB, 30 * GiB)  # the 10 GiB in use stay used
    uncapped = merge_inventory([StaticGpu(index=0)], reading).gpus[0]
    assert uncapped == reading.gpus[0]


def test_auto_with_nvml_keeps_every_gpu() -> None:
    reading = NvmlReading((_nvml_gpu(0, 80 * GiB, 0),), None, "560")
    inv = merge_inventory("auto", reading)
    assert (inv.gpus, inv.source, inv.messages, inv.driver) == (reading.gpus, "nvml", (), "560")


def test_table_shows_figures_claims_and_the_message() -> None:
    no_nvml = NvmlReading(error="NVML is not available (test)")
    inv = merge_inventory([StaticGpu(index=0, memory=24 * GiB)], no_nvml)
    console = Console(record=True, width=160)
    console.print(gpu_table(inventory_json(inv, [Claim("qwen", 0, 6 * GiB)], reserve=GiB)))
    text = console.export_text()
    assert "- / 24.0 GiB" in text
    assert "17.0 GiB" in text  # available: 24 - 6 claimed - 1 reserve
    assert "qwen 6.0 GiB" in text
    assert "using the GPUs listed in Node.gpus" in text


def test_table_lists_nvml_processes() -> None:
    gpu = GpuInfo(
        0,
        80 * GiB,
        70 * GiB,
        10 * GiB,
        "GPU-x",
        "NVIDIA H100",
        42,
        51,
        (GpuProcess(1234, 9 * GiB, "llama-server"), GpuProcess(99, None)),
    )
    console = Console(record=True, width=200)
    console.print(gpu_table(inventory_json(Inventory((gpu,), "nvml", (), "560.35"))))
    text = console.export_text()
    for part in (
        "NVIDIA H100",
        "driver 560.35",
        "10.0 GiB / 80.0 GiB",
        "42%",
        "51°C",
        "1234 llama-server (9.0 GiB)",
        "99 (?)",
    ):
        assert part in text


def test_metrics_expose_only_known_figures() -> None:
    static = GpuInfo(0, 24 * GiB, source="static")
    nvml = GpuInfo(1, 80 * GiB, 70 * GiB, 10 * GiB, "GPU-b", "H100", 50, 40, (GpuProcess(7, GiB),))
    inv = Inventory((static, nvml), "nvml+static")

    class Collector:
        def collect(self):
            return gpu_metric_families(inv, [Claim("m", 1, 5 * GiB)])

    reg = CollectorRegistry()
    reg.register(Collector())
    samples = {
        (s.name, s.labels["gpu"]): s.value
        for fam in text_string_to_metric_families(generate_latest(reg).decode())
        for s in fam.samples
    }
    assert samples[("modelplane_gpu_memory_total_bytes", "0")] == 24 * GiB
    assert samples[("modelplane_gpu_memory_claimed_bytes", "1")] == 5 * GiB
    assert samples[("modelplane_gpu_memory_claimed_bytes", "0")] == 0
    assert samples[("modelplane_gpu_utilization_ratio", "1")] == 0.5
    assert samples[("modelplane_gpu_processes", "1")] == 1
    assert ("modelplane_gpu_memory_free_bytes", "0") not in samples  # unknown, not 0
    assert ("modelplane_gpu_processes", "0") not in samples


def test_json_and_observed_usage() -> None:
    gpu = GpuInfo(
        0,
        80 * GiB,
        60 * GiB,
        20 * GiB,
        processes=(GpuProcess(10, 8 * GiB), GpuProcess(11, 2 * GiB), GpuProcess(12, None)),
    )
    inv = Inventory((gpu,), "nvml")
    doc = json.loads(json.dumps(inventory_json(inv, [Claim("a", 0, 12 * GiB)])))
    assert doc["gpus"][0]["claims"] == [
        {"model": "a", "gpu": 0, "bytes": 12 * GiB, "observed": None}
    ]
    assert doc["gpus"][0]["processes"][0] == {"pid": 10, "used": 8 * GiB, "name": ""}
    assert observed_usage(inv, {"a": {10, 11}, "b": {12}, "c": {99}}) == {
        ("a", 0): 10 * GiB,
        ("b", 0): 0,
    }


@needs_nvml
def test_real_nvml_figures_are_consistent() -> None:
    reading = read_nvml()
    assert reading.error is None and reading.gpus
    for i, g in enumerate(reading.gpus):
        assert g.index == i and g.uuid.startswith(("GPU-", "MIG-"))
        assert g.free is not None and g.used is not None and g.free + g.used <= g.total
