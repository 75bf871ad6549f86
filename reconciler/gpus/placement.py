"""Where a model goes: a pure function of its demand, the GPUs and the claims already made.

The rules, chosen so a user can predict them:

- ``gpus: none`` places on no GPU, always. ``auto`` on a box with no GPUs does the same (the
  CPU quickstart), with a reason saying so.
- Free memory on a GPU (:func:`free_bytes`) is the smaller of what claims leave and what NVML
  says is free minus our own claims not yet visible there, both less ``Node.vramReserve``.
  So memory of processes modelplane does not own is respected, and a model still loading is
  counted at its claim rather than at what it has allocated so far.
- Explicit indices are honoured exactly, or the model is Unschedulable with the numbers.
- ``auto``: best fit, the GPU left with the least free memory afterwards, ties to the lowest
  index (it keeps large holes for large models, as Ollama's scheduler does).
- When no single GPU fits, spread over the fewest GPUs that fit; among those, the set left
  with the least free memory, ties to the lowest indices. llama.cpp engines split in proportion
  to what each GPU can take (``--tensor-split``, in MiB); vLLM needs equal shards, so it
  spreads over a power-of-two count of GPUs (``--tensor-parallel-size``). Other engines are
  not spread: modelplane does not know their split flags.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from proxy.gateway import PRIORITIES
from reconciler.planning.planner import Placement
from reconciler.units import MiB, format_size

from .types import Claim, GpuInfo
from .vram import LLAMA_ENGINES, VLLM_ENGINES, Estimate, parse_engine_args

GpuRequest = Literal["auto", "none"] | tuple[int, ...]


@dataclass(frozen=True)
class ModelDemand:
    """What one model asks of the GPUs. Build it with :meth:`from_estimate`."""

    name: str
    bytes: int = 0
    gpus: GpuRequest = "auto"
    engine: str = "llama-server"
    priority: int = PRIORITIES["normal"]
    per_gpu: int = 0  # part of ``bytes`` each extra GPU needs again when spread
    fraction: float | None = None  # vLLM: this share of each GPU's total, on each GPU used
    tensor_parallel: int | None = None  # the user's --tensor-parallel-size
    tensor_split: tuple[float, ...] | None = None  # the user's --tensor-split proportions

    @classmethod
    def from_estimate(
        cls,
        name: str,
        estimate: Estimate,
        *,
        gpus: GpuRequest | Sequence[int] = "auto",
        engine: str = "llama-server",
        priority: int = PRIORITIES["normal"],
        args: Sequence[str] = (),
    ) -> ModelDemand:
        parsed = parse_engine_args(args)
        return cls(
            name=name,
            bytes=estimate.bytes,
            gpus=gpus if isinstance(gpus, str) else tuple(dict.fromkeys(gpus)),
            engine=engine,
            priority=priority,
            per_gpu=estimate.per_gpu,
            fraction=estimate.fraction,
            tensor_parallel=parsed.tensor_parallel,
            tensor_split=parsed.tensor_split,
        )


@dataclass(frozen=True)
class Unschedulable:
    """No room now; ``reason`` carries the numbers (``needs 12.0 GiB on GPU 1, 3.2 GiB free``)."""

    reason: str


def claims_of(placement: Placement, model: str) -> tuple[Claim, ...]:
    """What ``model`` holds on each GPU once placed there."""
    return tuple(Claim(model, g, b) for g, b in zip(placement.gpus, placement.shares, strict=True))


def free_bytes(gpu: GpuInfo, claims: Iterable[Claim], reserve: int = 0) -> int:
    """Memory a new claim may take on ``gpu``.

    ``min(total - claims - reserve, nvml_free - reserve - Σ max(0, claim - observed))``,
    floored at 0. The second term is NVML's free memory less what our claims will still take
    beyond what NVML already sees them use; it equals
    ``total - reserve - foreign - Σ max(claim, observed)``: memory used by processes
    modelplane does not own (``foreign``) stays respected, and a model using more than it
    claimed counts at its real use. A GPU without NVML figures has only the first term.
    """
    ours = [c for c in claims if c.gpu == gpu.index]
    by_claims = gpu.total - reserve - sum(c.bytes for c in ours)
    if gpu.free is None:
        return max(0, by_claims)
    pending = sum(max(0, c.bytes - (c.observed or 0)) for c in ours)
    return max(0, min(by_claims, gpu.free - reserve - pending))


def place(
    demand: ModelDemand,
    gpus: Sequence[GpuInfo],
    claims: Sequence[Claim] = (),
    reserve: int = 0,
) -> Placement | Unschedulable:
    """Place ``demand`` (its own claims must not be in ``claims``). Deterministic."""
    if demand.gpus == "none":
        return Placement((), (), (), "gpus: none")
    free = {g.index: free_bytes(g, claims, reserve) for g in gpus}
    by_index = {g.index: g for g in gpus}
    if isinstance(demand.gpus, tuple):
        missing = [i for i in demand.gpus if i not in by_index]
        if missing:
            known = ", ".join(map(str, sorted(by_index))) or "none"
            return Unschedulable(f"GPU {_join(missing)} not in the inventory (GPUs: {known})")
        chosen = [by_index[i] for i in demand.gpus]
        return _fit(demand, chosen, free) or Unschedulable(_explain(demand, chosen, free))
    if not gpus:
        return Placement((), (), (), "no GPUs in the inventory: runs without a GPU")
    return _auto(demand, sorted(gpus, key=lambda g: g.index), free)


def _auto(
    demand: ModelDemand, gpus: list[GpuInfo], free: dict[int, int]
) -> Placement | Unschedulable:
    sizes: Iterable[int]
    if demand.tensor_parallel:
        sizes = [demand.tensor_parallel]
    elif demand.tensor_split:
        sizes = [len(demand.tensor_split)]
    elif demand.engine in VLLM_ENGINES:
        sizes = (2**k for k in range(len(gpus).bit_length()))
    elif demand.engine in LLAMA_ENGINES:
        sizes = range(1, len(gpus) + 1)
    else:
        sizes = [1]
    for k in sizes:
        if k > len(gpus):
            break
        if not _may_fit(demand, k, free):
            continue
        fits = [p for combo in itertools.combinations(gpus, k) if (p := _fit(demand, combo, free))]
        if fits:
            best = min(fits, key=lambda p: (_leftover(p, free), p.gpus))
            leftover = _leftover(best, free)
            how = "best fit" if k == 1 else f"spread over {k} GPUs (no single GPU fits)"
            return Placement(
                best.gpus, best.shares, best.args, f"{how}; leaves {format_size(leftover)}"
            )
    return Unschedulable(_explain(demand, gpus, free))


def _may_fit(demand: ModelDemand, k: int, free: dict[int, int]) -> bool:
    """A cheap bound: can any ``k`` GPUs hold a llama-style split? (Saves trying every set.)"""
    if demand.engine in VLLM_ENGINES or demand.tensor_split:
        return True
    fixed = min(demand.per_gpu, demand.bytes)
    room = sorted((max(0, f - fixed) for f in free.values()), reverse=True)
    return sum(room[:k]) >= demand.bytes - fixed


def _leftover(p: Placement, free: dict[int, int]) -> int:
    return sum(free[g] - s for g, s in zip(p.gpus, p.shares, strict=True))


def _fit(demand: ModelDemand, gpus: Sequence[GpuInfo], free: dict[int, int]) -> Placement | None:
    """``demand`` placed on exactly ``gpus`` (in that order), or None if it does not fit."""
    shares = _shares(demand, gpus, free)
    if shares is None or any(s > free[g.index] for g, s in zip(gpus, shares, strict=True)):
        return None
    idx = tuple(g.index for g in gpus)
    return Placement(idx, tuple(shares), _split_args(demand, gpus, shares), "explicit GPUs")


def _shares(demand: ModelDemand, gpus: Sequence[GpuInfo], free: dict[int, int]) -> list[int] | None:
    """Bytes ``demand`` takes on each of ``gpus``; None when it cannot be shaped that way."""
    n = len(gpus)
    if (demand.tensor_parallel or n) != n or len(demand.tensor_split or gpus) != n:
        return None
    if demand.engine in VLLM_ENGINES:  # vLLM: the same share of every GPU's total
        fraction = demand.fraction or _vllm_utilization(demand, gpus)
        if fraction > 1:
            return None  # spec.vram is more than these GPUs hold
        shard = (demand.bytes - demand.per_gpu) / n + demand.per_gpu
        if demand.fraction is not None and shard > fraction * min(g.total for g in gpus):
            return None  # the weights do not fit in that many shards
        return [math.ceil(fraction * g.total) for g in gpus]
    if n == 1:
        return [demand.bytes]
    fixed = min(demand.per_gpu, demand.bytes)
    body = demand.bytes - fixed
    weights = list(demand.tensor_split or [max(0, free[g.index] - fixed) for g in gpus])
    total = sum(weights)
    if total <= 0:
        return None
    return [fixed + math.ceil(body * w / total) for w in weights]


def _vllm_utilization(demand: ModelDemand, gpus: Sequence[GpuInfo]) -> float:
    """``--gpu-memory-utilization`` that gives vLLM its ``spec.vram`` (rounded up to 0.01)."""
    per = demand.bytes / len(gpus)
    return max(math.ceil(per / g.total * 100) / 100 for g in gpus)


def _split_args(demand: ModelDemand, gpus: Sequence[GpuInfo], shares: list[int]) -> tuple[str, ...]:
    """The engine flags that make the backend use the GPUs as placed (none the user already set)."""
    args: list[str] = []
    n = len(gpus)
    if demand.engine in VLLM_ENGINES:
        if n > 1 and not demand.tensor_parallel:
            args += ["--tensor-parallel-size", str(n)]
        if demand.fraction is None:  # spec.vram: tell vLLM to take only that
            args += ["--gpu-memory-utilization", f"{_vllm_utilization(demand, gpus):.2f}"]
    elif demand.engine in LLAMA_ENGINES and n > 1 and not demand.tensor_split:
        fixed = min(demand.per_gpu, demand.bytes)
        mib = [str(max(1, (s - fixed) // MiB)) for s in shares]
        if demand.engine == "llama-cpp-python":
            args += ["--tensor_split", *mib]
        else:
            args += ["--tensor-split", ",".join(mib)]
    return tuple(args)


def _explain(demand: ModelDemand, gpus: Sequence[GpuInfo], free: dict[int, int]) -> str:
    """The numbers behind an Unschedulable: what is needed where, and what is free."""
    if len(gpus) == 1 or isinstance(demand.gpus, tuple):
        shares = _shares(demand, gpus, free)
        if shares is None:
            return (
                f"{demand.name} cannot be split over GPU {_join([g.index for g in gpus])} as asked"
            )
        short = [
            f"needs {format_size(s)} on GPU {g.index}, {format_size(free[g.index])} free"
            for g, s in zip(gpus, shares, strict=True)
            if s > free[g.index]
        ]
        return f"{demand.name} " + "; ".join(short)
    need = (
        f"{demand.fraction:g} of a GPU's total on each GPU"
        if demand.fraction is not None
        else format_size(demand.bytes)
    )
    frees = ", ".join(f"GPU {g.index} {format_size(free[g.index])}" for g in gpus)
    total = format_size(sum(free[g.index] for g in gpus))
    how = "" if demand.engine in LLAMA_ENGINES | VLLM_ENGINES else " (not spread: unknown engine)"
    return f"{demand.name} needs {need}{how}; free: {frees} (together {total})"


def _join(items: Iterable[int]) -> str:
    return ", ".join(map(str, items))
