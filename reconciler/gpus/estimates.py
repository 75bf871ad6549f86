"""VRAM estimates per model, from what is on disk (GGUF headers, file sizes). I/O at the edge.

The formula itself is pure (:func:`reconciler.vram.estimate`); this module finds its inputs: the
GGUF metadata of the main file (read once per file version, cached) or the total size of a
safetensors folder.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from functools import lru_cache
from pathlib import Path

from reconciler.planning.desired import Desired, DesiredModel

from .vram import CannotEstimate, Estimate, GgufInfo, estimate

NOT_NEEDED = "not needed: runs without a GPU"


def estimate_model(model: DesiredModel, path: str | None, gpu_box: bool = True) -> Estimate | str:
    """The model's estimate, or why there is none (the message names the fix).

    A model that will not use a GPU (``gpus: none``, or ``auto`` on a box without GPUs) gets no
    estimate: reading a GGUF header with a large vocabulary takes seconds, for nothing.
    """
    wanted = model.spec.gpus
    if wanted == "none" or (wanted == "auto" and not gpu_box):
        return NOT_NEEDED
    info: GgufInfo | None = None
    size: int | None = None
    location = Path(path).expanduser() if path else None
    try:
        if location is not None and location.is_file() and location.suffix == ".gguf":
            stat = location.stat()
            try:
                info = _gguf_info(str(location), stat.st_mtime_ns, stat.st_size)
            except Exception:
                if model.spec.vram is None:
                    raise
                # spec.vram says it all: a header that cannot be read must not hide it
        elif location is not None and location.is_dir():
            size = sum(p.stat().st_size for p in location.rglob("*") if p.is_file())
        return estimate(
            vram=model.spec.vram,
            engine=model.spec.engine,
            args=model.spec.args,
            gguf_info=info,
            weights_size=size,
        )
    except (CannotEstimate, ValueError, OSError) as exc:
        return str(exc)


def estimate_all(
    desired: Desired,
    resolve_path: Callable[[DesiredModel], str | None],
    only: Collection[str] | None = None,
    gpu_box: bool = True,
) -> dict[str, Estimate | str]:
    """Every model's estimate (or those named in ``only``); blocking file I/O, so async code
    runs it in a thread. ``resolve_path`` finds a hub source's file in the weights cache."""
    return {
        name: estimate_model(model, model.spec.source.path or resolve_path(model), gpu_box)
        for name, model in desired.models.items()
        if only is None or name in only
    }


def missing(estimates: Mapping[str, Estimate | str], desired: Desired) -> list[str]:
    """Models to estimate (again): new or changed ones, those without an estimate yet
    (weights not downloaded when last looked), and ``gpus: auto`` ones that needed none because
    no GPU was known then (NVML or a Ray cluster's GPU nodes may show up later; looking again
    costs no I/O while there are none)."""
    return [
        name
        for name, model in desired.models.items()
        if not isinstance(estimates.get(name), Estimate)
        and not (estimates.get(name) == NOT_NEEDED and model.spec.gpus == "none")
    ]


@lru_cache(maxsize=256)
def _gguf_info(path: str, mtime_ns: int, size: int) -> GgufInfo:
    from reconciler.weights.gguf_meta import read_gguf_metadata  # huggingface_hub: only when needed

    meta = read_gguf_metadata(path)
    shards = int(meta.get("split_count") or 1)
    return GgufInfo.from_mapping(
        {
            "architecture": meta.get("architecture") or "",
            "layers": meta.get("block_count"),
            "context_length": meta.get("context_length"),
            "heads": meta.get("head_count"),
            "kv_heads": meta.get("head_count_kv"),
            "embedding_length": meta.get("embedding_length"),
            "size": size * shards,
            "key_length": meta.get("key_length"),
            "value_length": meta.get("value_length"),
            "vocab_size": meta.get("vocab_size"),
        }
    )
