"""Placement: explicit indices, best fit, spreading, and the free-memory rule."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import event, given, settings
from hypothesis import strategies as st

from reconciler.gpus.placement import ModelDemand, Unschedulable, free_bytes, place
from reconciler.gpus.types import Claim, GpuInfo
from reconciler.gpus.vram import estimate
from reconciler.planning.planner import Placement
from reconciler.units import GiB


def static(*totals_gib: float) -> list[GpuInfo]:
    return [GpuInfo(i, int(t * GiB), source="static") for i, t in enumerate(totals_gib)]


def nvml(index: int, total_gib: float, free_gib: float) -> GpuInfo:
    total, free = int(total_gib * GiB), int(free_gib * GiB)
    return GpuInfo(index, total, free, total - free)


def demand(gib: float, gpus="auto", engine="llama-server", **kw) -> ModelDemand:
    return ModelDemand("m", int(gib * GiB), gpus, engine, **kw)


def test_none_and_cpu_only_boxes() -> None:
    assert place(demand(80, "none"), static(24)) == Placement((), (), (), "gpus: none")
    cpu = place(demand(4), [])
    assert isinstance(cpu, Placement) and cpu.gpus == () and cpu.cuda_visible_devices == ""
    assert "no GPUs in the inventory" in cpu.reason


def test_best_fit_and_ties_to_the_lowest_index() -> None:
    gpus = static(24, 16, 16, 48)
    p = place(demand(10), gpus)
    assert isinstance(p, Placement) and p.gpus == (1,) and p.shares == (10 * GiB,)
    assert p.reason == "best fit; leaves 6.0 GiB" and p.args == ()
    assert place(demand(20), gpus).gpus == (0,)
    assert place(demand(30), gpus).gpus == (3,)


def test_explicit_gpus_are_honoured_or_explained() -> None:
    gpus = static(24, 16)
    assert place(demand(4, (0,)), gpus).gpus == (0,)  # though GPU 1 fits better
    claims = [Claim("other", 1, int(12.8 * GiB))]
    bad = place(demand(12, (1,)), gpus, claims)
    assert bad == Unschedulable("m needs 12.0 GiB on GPU 1, 3.2 GiB free")
    missing = place(demand(1, (0, 5)), gpus)
    assert missing == Unschedulable("GPU 5 not in the inventory (GPUs: 0, 1)")


def test_reserve_and_foreign_processes_are_respected() -> None:
    gpu = nvml(0, 24, free_gib=14)  # 10 GiB used by something modelplane does not own
    assert free_bytes(gpu, [], reserve=GiB) == 13 * GiB
    assert isinstance(place(demand(13), [gpu], reserve=GiB), Placement)
    assert place(demand(13.5), [gpu], reserve=GiB) == Unschedulable(
        "m needs 13.5 GiB on GPU 0, 13.0 GiB free"
    )


def test_own_claims_count_once_whether_nvml_sees_them_yet_or_not() -> None:
    # a model claiming 8 GiB, of which NVML already shows 3 GiB (still loading)
    loading = nvml(0, 24, free_gib=21)
    assert free_bytes(loading, [Claim("a", 0, 8 * GiB, observed=3 * GiB)]) == 16 * GiB
    # fully loaded: NVML shows all 8; same answer
    loaded = nvml(0, 24, free_gib=16)
    assert free_bytes(loaded, [Claim("a", 0, 8 * GiB, observed=8 * GiB)]) == 16 * GiB
    # using more than it claimed: counted at its real use
    greedy = nvml(0, 24, free_gib=12)
    assert free_bytes(greedy, [Claim("a", 0, 8 * GiB, observed=12 * GiB)]) == 12 * GiB
    # NVML cannot attribute it: counted twice, on the safe side
    assert free_bytes(loaded, [Claim("a", 0, 8 * GiB)]) == 8 * GiB


def test_spread_over_the_fewest_gpus_with_tensor_split() -> None:
    est = estimate(vram=30 * GiB)
    p = place(ModelDemand.from_estimate("big", est), static(16, 24, 24))
    assert isinstance(p, Placement) and p.gpus == (0, 1)  # two GPUs, least left over
    assert p.shares == (12 * GiB, 18 * GiB) and p.args == ("--tensor-split", "12288,18432")
    assert p.reason == "spread over 2 GPUs (no single GPU fits); leaves 10.0 GiB"
    assert p.cuda_visible_devices == "0,1"
    assert place(ModelDemand.from_estimate("big", est), static(16, 24, 24, 40)).gpus == (3,)
    uneven = place(demand(30, per_gpu=GiB), static(24, 12))
    # 1 GiB on each GPU, the other 29 GiB in proportion to what is left (23 : 11)
    assert uneven.gpus == (0, 1) and uneven.args == ("--tensor-split", "20088,9607")
    assert 31 * GiB <= sum(uneven.shares) <= 31 * GiB + 2  # rounded up to the byte
    py = place(demand(30, engine="llama-cpp-python"), static(24, 12))
    assert py.args == ("--tensor_split", "20480", "10240")


def test_user_split_and_tensor_parallel_are_kept() -> None:
    p = place(demand(30, (0, 1), tensor_split=(3.0, 1.0)), static(24, 24))
    assert p.shares == (int(22.5 * GiB), int(7.5 * GiB)) and p.args == ()
    v = place(demand(30, engine="vllm", tensor_parallel=2), static(24, 24, 24))
    assert v.gpus == (0, 1) and "--tensor-parallel-size" not in v.args


def test_vllm_takes_its_share_of_each_gpu_and_spreads_by_powers_of_two() -> None:
    est = estimate(engine="vllm", weights_size=60 * GiB)  # needs ~73 GiB: two 80 GiB GPUs
    d = ModelDemand.from_estimate("v", est, engine="vllm")
    p = place(d, static(80, 80, 80))
    assert p.gpus == (0, 1) and p.args == ("--tensor-parallel-size", "2")
    assert p.shares == (72 * GiB, 72 * GiB)
    three = ModelDemand.from_estimate(
        "v", estimate(engine="vllm", weights_size=130 * GiB), engine="vllm"
    )
    assert isinstance(place(three, static(80, 80, 80)), Unschedulable)  # 3 is not a power of two
    assert place(three, static(80, 80, 80, 80)).gpus == (0, 1, 2, 3)
    small = ModelDemand.from_estimate("s", estimate(engine="vllm", vram=20 * GiB), engine="vllm")
    s = place(small, static(80))
    assert s.args == ("--gpu-memory-utilization", "0.25") and s.shares == (20 * GiB,)


def test_unknown_engines_are_not_spread() -> None:
    r = place(demand(30, engine="custom"), static(24, 24))
    assert r == Unschedulable(
        "m needs 30.0 GiB (not spread: unknown engine); free: GPU 0 24.0 GiB, GPU 1 24.0 GiB "
        "(together 48.0 GiB)"
    )


# --- properties ----------------------------------------------------------------------------------

sizes = st.integers(min_value=0, max_value=40).map(lambda n: n * GiB // 2)


@st.composite
def scenes(draw):
    n = draw(st.integers(0, 5))
    gpus = []
    for i in range(n):
        total = draw(st.integers(8, 48)) * GiB
        if draw(st.booleans()):
            gpus.append(GpuInfo(i, total, source="static"))
        else:
            free = draw(st.integers(0, total // GiB)) * GiB
            gpus.append(GpuInfo(i, total, free, total - free))
    claims = [
        Claim(f"c{j}", draw(st.sampled_from(range(n))), draw(sizes), draw(st.none() | sizes))
        for j in range(draw(st.integers(0, 6) if n else st.just(0)))
    ]
    engine = draw(st.sampled_from(["llama-server", "llama-cpp-python", "vllm", "custom"]))
    indices = [g.index for g in gpus]
    want = draw(
        st.sampled_from(["auto", "auto", "auto", "none", "explicit"] if indices else ["auto"])
    )
    if want == "explicit":
        want = tuple(draw(st.lists(st.sampled_from(indices), min_size=1, max_size=3, unique=True)))
    fraction = draw(st.none() | st.sampled_from([0.5, 0.9])) if engine == "vllm" else None
    d = ModelDemand(
        "new", draw(sizes), want, engine, per_gpu=draw(st.sampled_from([0, GiB])), fraction=fraction
    )
    reserve = draw(st.sampled_from([0, GiB]))
    return d, gpus, claims, reserve


@settings(max_examples=400, deadline=None)
@given(scenes())
def test_placement_properties(scene) -> None:
    d, gpus, claims, reserve = scene
    result = place(d, gpus, claims, reserve)
    kind = "unschedulable" if isinstance(result, Unschedulable) else f"{len(result.gpus)} GPUs"
    event(f"{d.gpus if isinstance(d.gpus, str) else 'explicit'}: {kind}")
    shuffled = list(gpus)
    random.Random(0).shuffle(shuffled)
    assert place(d, shuffled, claims, reserve) == result  # deterministic, order-free
    if d.gpus == "none":
        assert result.gpus == ()
        return
    if not isinstance(result, Placement):
        assert result.reason
        return
    by_index = {g.index: g for g in gpus}
    for g, share in zip(result.gpus, result.shares, strict=True):
        # never oversubscribed by claims, nor past what NVML shows free
        assert share <= free_bytes(by_index[g], claims, reserve)
        claimed = sum(c.bytes for c in claims if c.gpu == g)
        assert share == 0 or claimed + share + reserve <= by_index[g].total
    if isinstance(d.gpus, tuple):
        assert result.gpus == d.gpus
    elif gpus and d.fraction is None:
        assert sum(result.shares) >= d.bytes
    if len(result.gpus) > 1 and d.engine in ("llama-server", "llama-cpp-python"):
        assert result.args[0] in ("--tensor-split", "--tensor_split")
    if len(result.gpus) > 1 and d.engine == "vllm":
        assert result.args[:2] == ("--tensor-parallel-size", str(len(result.gpus)))
    if d.gpus != "auto" or not gpus:
        return
    free = {g.index: free_bytes(g, claims, reserve) for g in gpus}
    singles = {g.index: place(replace(d, gpus=(g.index,)), gpus, claims, reserve) for g in gpus}
    fits = {i: free[i] - p.shares[0] for i, p in singles.items() if isinstance(p, Placement)}
    if len(result.gpus) == 1:
        # best fit: no GPU that fits leaves less, and ties went to the lowest index
        (chosen,) = result.gpus
        assert (fits[chosen], chosen) == min((left, i) for i, left in fits.items())
    else:
        assert not fits  # spread only when no single GPU would do


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.integers(1, 48), min_size=1, max_size=6),
    st.integers(1, 200),
    st.sampled_from(["llama-server", "llama-cpp-python"]),
)
def test_llama_spreads_over_the_fewest_gpus_whenever_they_hold_it(totals, need, engine) -> None:
    gpus = static(*totals)
    result = place(demand(need, engine=engine), gpus)
    event("spread" if isinstance(result, Placement) and len(result.gpus) > 1 else "other")
    largest_first = sorted(totals, reverse=True)
    fewest = next((k for k in range(1, len(totals) + 1) if sum(largest_first[:k]) >= need), None)
    if fewest is None:
        assert isinstance(result, Unschedulable) and f"needs {need}.0 GiB" in result.reason
    else:
        assert isinstance(result, Placement) and len(result.gpus) == fewest
        assert sum(result.shares) >= need * GiB
