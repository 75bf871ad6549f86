"""GPUs through the one-shot CLI: ``validate``, ``plan``, ``apply``, ``status``, ``gpus``.

``apply`` schedules as the service does: pinned models are placed (spread with
``--tensor-split`` when no single GPU holds them), an unpinned model is evicted to make room,
and pins that cannot fit are reported with the numbers.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.units import GiB
from tests.helpers.manifests import ManifestDir, fake_engine_doc, model_doc

from .conftest import Cli, backend_stats, node_doc


def _endpoints(cli: Cli, manifests: ManifestDir) -> dict[str, str]:
    rows = cli("status", "--dir", manifests.root, "--json").json()["models"]
    return {r["name"]: r["endpoint"] for r in rows if r["endpoint"]}


def test_apply_spreads_evicts_and_reports_pins_that_cannot_fit(
    cli: Cli, manifests: ManifestDir, state_dir: Path
) -> None:
    manifests.write("node.yaml", node_doc())
    # An Engine named llama-server (so placement spreads it) that runs the fake backend.
    manifests.write("engines.yaml", fake_engine_doc("fake"), fake_engine_doc("llama-server"))
    big = model_doc("s", engine="llama-server", vram="12GiB", pin=True, priority="high")
    w = model_doc("w", vram="4GiB", pin=True)
    manifests.write("models.yaml", big, model_doc("u", vram="4GiB", pin=True, stayWarm="1h"), w)

    # plan: s (placed first: high priority) fits on neither GPU alone, so it spreads; u and w
    # then fill what is left of GPU 0 and GPU 1.
    planned = cli("plan", manifests.root, "--json")
    assert planned.code == 2, planned.output
    data = planned.json()
    assert data["models"]["s"]["estimate"]["describe"] == "12.0 GiB (spec.vram)"
    assert (
        data["models"]["u"]["estimate"]["bytes"],
        data["models"]["u"]["estimate"]["source"],
    ) == (
        4 * GiB,
        "spec.vram",
    )
    placements = data["gpus"]["placements"]
    assert placements["s"]["gpus"] == [0, 1]
    assert placements["s"]["args"] == ["--tensor-split", "6144,6144"]
    assert placements["s"]["claims"] == [{"gpu": 0, "bytes": 6 * GiB}, {"gpu": 1, "bytes": 6 * GiB}]
    assert "spread over 2 GPUs" in placements["s"]["reason"]
    assert (placements["u"]["gpus"], placements["u"]["args"]) == ([0], [])
    assert (placements["w"]["gpus"], placements["w"]["args"]) == ([1], [])
    assert data["gpus"]["pins"] is None
    table = cli("plan", manifests.root)
    assert "GPU 0,1 --tensor-split 6144,6144 (spread over 2 GPUs" in table.stdout, table.output

    applied = cli("apply", manifests.root)
    assert applied.code == 0, applied.output
    assert "ok    start s (pinned, not running) on GPU 0,1 → http://" in applied.stdout
    endpoints = _endpoints(cli, manifests)
    s_stats = backend_stats(endpoints["s"])
    assert s_stats["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert s_stats["tensor_split"] == "6144,6144"
    assert backend_stats(endpoints["u"])["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert backend_stats(endpoints["w"])["env"]["CUDA_VISIBLE_DEVICES"] == "1"

    status = cli("status", "--dir", manifests.root, "--json").json()
    claims = {
        g["index"]: sorted((c["model"], c["bytes"] // GiB) for c in g["claims"])
        for g in status["gpus"]["gpus"]
    }
    assert claims == {0: [("s", 6), ("u", 4)], 1: [("s", 6), ("w", 4)]}
    gpus = cli("gpus", "--dir", manifests.root)
    assert gpus.code == 0, gpus.output
    assert "NVML is not available" in gpus.stdout
    assert "s 6.0 GiB, u 4.0 GiB" in gpus.stdout

    # u no longer pinned (no restart: pin is not part of the spec), c pinned: u makes room.
    manifests.write(
        "models.yaml",
        big,
        model_doc("u", vram="4GiB", stayWarm="1h"),
        w,
        model_doc("c", vram="4GiB", pin=True),
    )
    planned = cli("plan", manifests.root)
    assert planned.code == 2, planned.output
    rows = [line.rstrip().split(None, 2) for line in planned.stdout.splitlines()[1:]]
    assert rows == [
        ["evict", "u", "VRAM for c, priority normal"],
        [
            "start",
            "c",
            "pinned, not running; after evictions: evict u (frees 4.0 GiB); best fit; leaves 0 B",
        ],
    ], planned.stdout
    applied = cli("apply", manifests.root)
    assert applied.code == 0, applied.output
    assert applied.stdout.splitlines()[0] == "ok    evict u (VRAM for c, priority normal)"
    assert "ok    start c (pinned, not running) on GPU 0 → http://" in applied.stdout
    endpoints = _endpoints(cli, manifests)
    assert set(endpoints) == {"s", "w", "c"}
    assert backend_stats(endpoints["c"])["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert backend_stats(endpoints["s"])["pid"] == s_stats["pid"]  # pinned s untouched

    # d (pinned, 1 GiB) on top: 21 GiB of pins for 20 GiB of GPUs.
    manifests.write(
        "models.yaml",
        big,
        model_doc("u", vram="4GiB", stayWarm="1h"),
        w,
        model_doc("c", vram="4GiB", pin=True),
        model_doc("d", vram="1GiB", pin=True),
    )
    pins = "pinned models need 21.0 GiB, GPUs have 20.0 GiB (after 0 B reserve per GPU): c, d, s, w"
    validated = cli("validate", manifests.root)
    assert validated.code == 1
    assert f"{manifests.path('node.yaml')}:1:1: Node/box: {pins}" in validated.stderr
    planned = cli("plan", manifests.root)
    assert planned.code == 1
    assert f"error: {pins}" in planned.stderr
    assert "UNSCHEDULABLE: d needs 1.0 GiB" in planned.stdout
    applied = cli("apply", manifests.root)
    assert applied.code == 1
    assert f"error: {pins}" in applied.stderr
    fail = next(line for line in applied.stderr.splitlines() if line.startswith("FAIL"))
    assert fail.startswith("FAIL  start d (pinned, not running): unschedulable: d needs 1.0 GiB")
    assert fail.endswith("nothing can be evicted (c is pinned; s is pinned; w is pinned)")
    rows = cli("status", "--dir", manifests.root, "--json").json()["models"]
    d = next(r for r in rows if r["name"] == "d")
    assert d["phase"] == "Unschedulable" and "d needs 1.0 GiB" in d["reason"]

    # d unpinned: nothing to start, and the next apply forgets that d was Unschedulable.
    manifests.write(
        "models.yaml",
        big,
        model_doc("u", vram="4GiB", stayWarm="1h"),
        w,
        model_doc("c", vram="4GiB", pin=True),
        model_doc("d", vram="1GiB"),
    )
    applied = cli("apply", manifests.root)
    assert applied.code == 0, applied.output
    rows = cli("status", "--dir", manifests.root, "--json").json()["models"]
    assert {r["name"]: r["phase"] for r in rows} == {
        "s": "Ready",
        "u": "Asleep",
        "w": "Ready",
        "c": "Ready",
        "d": "Asleep",
    }
    assert cli("down", "--dir", manifests.root).code == 0


def test_without_nvml_gpus_says_so_and_the_static_list_still_works(
    cli: Cli, manifests: ManifestDir
) -> None:
    manifests.write("node.yaml", node_doc(gpus="auto"))
    auto = cli("gpus", "--dir", manifests.root)
    assert auto.code == 0, auto.output
    assert "GPUs (none)" in auto.stdout
    assert "NVML is not available" in auto.stdout
    assert "no GPUs: models with gpus: auto run without a GPU" in auto.stdout
    assert cli("gpus", "--dir", manifests.root, "--json").json()["gpus"] == []

    manifests.write("node.yaml", node_doc())
    static = cli("gpus", "--dir", manifests.root, "--json")
    assert static.code == 0, static.output
    data = static.json()
    assert data["source"] == "static"
    assert [(g["index"], g["total"], g["free"]) for g in data["gpus"]] == [
        (0, 10 * GiB, None),
        (1, 10 * GiB, None),
    ]
    assert data["messages"][-1] == "using the GPUs listed in Node.gpus"
