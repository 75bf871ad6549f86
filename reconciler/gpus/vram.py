"""How much GPU memory a model will take: a pure estimate with a formula a user can check.

Placement and eviction are only as good as this number, so every estimate carries its parts
(weights, KV cache, compute) and the assumptions it made (``notes``), for ``plan --json`` to
show. The first rule that applies wins (sizes: GiB = 2**30 bytes):

1. ``spec.vram`` given: that, as is. (vLLM: placement then passes
   ``--gpu-memory-utilization = spec.vram / GPU total``, rounded up to 0.01, unless the args
   set it themselves, which then wins.)
2. vLLM: ``--gpu-memory-utilization`` (default 0.9) * the total of *each* GPU it lands on (it
   reserves that share at start-up whatever the model's size); the weights
   (``size * 1.2 + 1 GiB``) only decide how many GPUs it must spread over.
3. GGUF (llama-server, llama-cpp-python, or a custom engine serving a GGUF)::

       VRAM      = weights + kv_cache + compute
       weights   = file size (all shards) * offloaded_layers / layers
       kv_cache  = offloaded_layers * kv_heads * (key_dim * bytes(type_k)
                   + value_dim * bytes(type_v)) * ctx
       compute   = 768 MiB + 512 * vocab_size * 4     (the logits buffer when vocab is known)
       key_dim   = value_dim = embedding_length / heads (unless the GGUF gives key/value_length)

   ``bytes`` is 2 for the default f16 cache; ``--cache-type-k/-v`` use ggml's block sizes
   (q8_0 = 34/32, q4_0 = 18/32). Example: Qwen2.5-7B-Instruct Q4_K_M (4.68 GB, 28 layers, 4 KV
   heads, head dim 128) at ``--ctx-size 8192``: KV = 28*4*128*2*2*8192 = 448 MiB, total about
   4.36 + 0.44 + 0.75 = 5.5 GiB.
4. Safetensors (any file set without GGUF metadata) on a non-vLLM engine:
   ``size * 1.2 + 1 GiB`` (activations and cache on top; the CUDA context and allocator pools).
5. Nothing to go on: :class:`CannotEstimate`, and the model is Unschedulable with "set
   spec.vram".

Defaults when ``spec.args`` do not say: llama-server and custom engines use the trained context
capped at :data:`CONTEXT_CAP` (32768; a 128k-trained 8B model would otherwise claim 16 GiB of
KV cache) and every layer on the GPU; llama-cpp-python its server's defaults, context 2048 and
**no** layer on the GPU. ``-c 0`` means the trained context, uncapped. The notes say when a
default applied. The 768 MiB allowance is calibrated on an H100 (see :data:`COMPUTE_ALLOWANCE`);
known over-estimates, on the safe side: sliding-window layers count at full context,
``token_embd`` (kept on the CPU by llama.cpp) counts, per-layer KV head counts count at their
maximum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gguf

from reconciler.units import MiB, format_size

LLAMA_ENGINES = frozenset({"llama-server", "llama-cpp-python"})
VLLM_ENGINES = frozenset({"vllm"})

# Context assumed when the args do not set one and the engine's own default is the trained
# context (llama-server since 2025): capped so a 128k-trained model does not claim 16 GiB of
# KV cache by default. Pass --ctx-size to make the estimate exact.
CONTEXT_CAP = 32768
# The llama-cpp-python server's own defaults (llama_cpp/server/settings.py).
LLAMA_CPP_PYTHON_CTX = 2048
LLAMA_CPP_PYTHON_NGL = 0
# CUDA context + llama.cpp compute buffers, per GPU. Calibrated on an H100: a 1.35 GiB GGUF with
# 0.25 GiB of KV cache (-c 8192) showed 2.3 GiB in NVML, leaving ~0.7 GiB for these.
COMPUTE_ALLOWANCE = 768 * MiB
# Logits buffer: llama.cpp's physical batch (n_ubatch, default 512) * vocabulary * f32.
UBATCH = 512
# Safetensors served by a non-vLLM engine: activations/cache on top of the weights, and the
# runtime's own footprint (CUDA context, allocator pools).
SAFETENSORS_FACTOR = 1.2
ENGINE_OVERHEAD = 1024 * MiB
VLLM_DEFAULT_UTILIZATION = 0.9


class CannotEstimate(ValueError):
    """Nothing to estimate from: no ``spec.vram``, no GGUF metadata and no file sizes."""


@dataclass(frozen=True)
class GgufInfo:
    """The GGUF header fields the estimate needs.

    Mapping from GGUF keys (``{arch}`` is ``general.architecture``) and from the downloads
    helper's dict keys (the second name), as :meth:`from_mapping` accepts them:

    ======================  ==========================================  ====================
    field                   GGUF key                                    dict key
    ======================  ==========================================  ====================
    architecture            general.architecture                        architecture
    layers                  {arch}.block_count                          layers
    context_length          {arch}.context_length                       context_length
    heads                   {arch}.attention.head_count                 heads
    kv_heads                {arch}.attention.head_count_kv (or heads)   kv_heads
    embedding_length        {arch}.embedding_length                     embedding_length
    size                    sum of the file sizes (all shards)          size
    key_length              {arch}.attention.key_length (optional)      key_length
    value_length            {arch}.attention.value_length (optional)    value_length
    vocab_size              len(tokenizer.ggml.tokens) (optional)       vocab_size
    ======================  ==========================================  ====================
    """

    architecture: str
    layers: int
    context_length: int
    heads: int
    kv_heads: int
    embedding_length: int
    size: int
    key_length: int | None = None
    value_length: int | None = None
    vocab_size: int | None = None

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> GgufInfo:
        """From the downloads helper's dict. Per-layer lists (some archs) count at their max."""

        def num(key: str, default: Any = None) -> Any:
            value = m.get(key, default)
            if isinstance(value, Sequence) and not isinstance(value, str):
                value = max(value) if value else default
            return None if value is None else int(value)

        heads = num("heads")
        return cls(
            architecture=str(m.get("architecture", "")),
            layers=num("layers"),
            context_length=num("context_length"),
            heads=heads,
            kv_heads=num("kv_heads", heads),
            embedding_length=num("embedding_length"),
            size=num("size"),
            key_length=num("key_length"),
            value_length=num("value_length"),
            vocab_size=num("vocab_size"),
        )

    @classmethod
    def from_gguf_fields(cls, fields: Mapping[str, Any], size: int) -> GgufInfo:
        """From decoded GGUF key/values (e.g. ``{k: f.contents() for k, f in reader.fields}``)."""
        arch = str(fields["general.architecture"])

        def key(name: str) -> Any:
            return fields.get(f"{arch}.{name}")

        tokens = fields.get("tokenizer.ggml.tokens")
        return cls.from_mapping(
            {
                "architecture": arch,
                "layers": key("block_count"),
                "context_length": key("context_length"),
                "heads": key("attention.head_count"),
                "kv_heads": key("attention.head_count_kv"),
                "embedding_length": key("embedding_length"),
                "size": size,
                "key_length": key("attention.key_length"),
                "value_length": key("attention.value_length"),
                "vocab_size": None if tokens is None else len(tokens),
            }
        )


@dataclass(frozen=True)
class EngineArgs:
    """The engine arguments that change memory use, parsed from ``spec.args``."""

    ctx: int | None = None  # 0 = the model's trained context (llama.cpp's meaning)
    n_gpu_layers: int | None = None  # -1 = all
    cache_type_k: str | None = None
    cache_type_v: str | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel: int | None = None
    tensor_split: tuple[float, ...] | None = None


_FLAGS: dict[str, str] = {
    **dict.fromkeys(("-c", "--ctx-size", "--n_ctx", "--n-ctx"), "ctx"),
    **dict.fromkeys(("-ngl", "--gpu-layers", "--n-gpu-layers", "--n_gpu_layers"), "n_gpu_layers"),
    **dict.fromkeys(("-ctk", "--cache-type-k", "--type_k"), "cache_type_k"),
    **dict.fromkeys(("-ctv", "--cache-type-v", "--type_v"), "cache_type_v"),
    "--gpu-memory-utilization": "gpu_memory_utilization",
    **dict.fromkeys(("-tp", "--tensor-parallel-size"), "tensor_parallel"),
    **dict.fromkeys(("-ts", "--tensor-split", "--tensor_split"), "tensor_split"),
}


def parse_engine_args(args: Sequence[str]) -> EngineArgs:
    """Pick the memory-relevant flags out of ``spec.args``; the rest pass through untouched.

    Accepts ``--flag value`` and ``--flag=value``; the last occurrence wins, as in the engines.
    Raises ValueError with the flag and the bad value, for ``validate`` to report.
    """
    found: dict[str, Any] = {}
    i = 0
    while i < len(args):
        flag, eq, inline = args[i].partition("=")
        field = _FLAGS.get(flag)
        i += 1
        if field is None:
            continue
        if eq:
            values = [inline]
        elif flag == "--tensor_split":  # llama-cpp-python: nargs="*"
            values = []
            while i < len(args) and _is_float(args[i]):
                values.append(args[i])
                i += 1
        elif i < len(args):
            values = [args[i]]
            i += 1
        else:
            raise ValueError(f"{flag}: missing value")
        found[field] = _convert(field, flag, values)
    return EngineArgs(**found)


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _convert(field: str, flag: str, values: list[str]) -> Any:
    raw = " ".join(values)
    try:
        if field == "ctx" or field == "tensor_parallel":
            n = int(raw)
            if n < 0 or (field == "tensor_parallel" and n < 1):
                raise ValueError
            return n
        if field == "n_gpu_layers":
            return -1 if raw in ("all", "auto", "max") else max(-1, int(raw))
        if field == "gpu_memory_utilization":
            f = float(raw)
            if not 0 < f <= 1:
                raise ValueError
            return f
        if field == "tensor_split":
            parts = [p for v in values for p in v.replace("/", ",").split(",") if p]
            split = tuple(float(p) for p in parts)
            if not split or any(s < 0 for s in split) or sum(split) <= 0:
                raise ValueError
            return split
        return _cache_type(raw)
    except (ValueError, KeyError):
        raise ValueError(f"{flag}: invalid value {raw!r}") from None


def _cache_type(raw: str) -> str:
    """llama-server names the type (q8_0); llama-cpp-python passes ggml's enum number."""
    if raw.isdigit():
        return gguf.GGMLQuantizationType(int(raw)).name.lower()
    gguf.GGMLQuantizationType[raw.upper()]  # KeyError for an unknown name
    return raw.lower()


def bytes_per_element(cache_type: str | None) -> float:
    """Bytes per KV cache element: f16 = 2, q8_0 = 34/32, ... (ggml's block sizes)."""
    block, type_size = gguf.GGML_QUANT_SIZES[
        gguf.GGMLQuantizationType[(cache_type or "f16").upper()]
    ]
    return type_size / block


@dataclass(frozen=True)
class Estimate:
    """A model's VRAM need, how it was reached, and what placement must know to spread it.

    ``bytes`` is the total over all GPUs when on one GPU; ``per_gpu`` is the part of it every
    further GPU needs again when spread (CUDA context, compute buffers). ``fraction`` (vLLM
    without ``spec.vram``) means "this share of each GPU's total", decided at placement; then
    ``bytes`` is the minimum the weights need, which decides how many GPUs.
    """

    bytes: int
    source: str  # spec.vram | gguf | safetensors | vllm
    per_gpu: int = 0
    fraction: float | None = None
    parts: Mapping[str, int] | None = None
    notes: tuple[str, ...] = ()

    def describe(self) -> str:
        """``5.1 GiB (gguf: weights 4.1 GiB + kv_cache 512.0 MiB + compute 768.0 MiB)``."""
        head = (
            f"{self.fraction:g} * GPU total"
            if self.fraction is not None
            else format_size(self.bytes)
        )
        parts = " + ".join(f"{k} {format_size(v)}" for k, v in (self.parts or {}).items())
        return f"{head} ({self.source}{': ' + parts if parts else ''})"


def estimate(
    *,
    vram: int | None = None,
    engine: str = "llama-server",
    args: Sequence[str] = (),
    gguf_info: GgufInfo | None = None,
    weights_size: int | None = None,
) -> Estimate:
    """The VRAM a model needs. ``weights_size`` is the total of a non-GGUF source's files.

    ``spec.vram`` wins. vLLM claims a share of each GPU. Otherwise GGUF metadata gives the
    detailed formula, and plain file sizes the overhead-factor one. Raises
    :class:`CannotEstimate` when there is nothing to go on (the model is then Unschedulable
    with "set spec.vram"), and ValueError for unparseable args.
    """
    parsed = parse_engine_args(args)
    if engine in VLLM_ENGINES and (vram is None or parsed.gpu_memory_utilization is not None):
        return _vllm(parsed, gguf_info, weights_size, vram)
    if vram is not None:
        return Estimate(bytes=vram, source="spec.vram")
    if gguf_info is not None:
        return _gguf(gguf_info, engine, parsed)
    if weights_size is not None:
        weights = math.ceil(weights_size * SAFETENSORS_FACTOR)
        return Estimate(
            bytes=weights + ENGINE_OVERHEAD,
            source="safetensors",
            per_gpu=ENGINE_OVERHEAD,
            parts={"weights*1.2": weights, "engine": ENGINE_OVERHEAD},
        )
    raise CannotEstimate(
        "no spec.vram, GGUF metadata or file sizes to estimate VRAM from: set spec.vram"
    )


def _gguf(info: GgufInfo, engine: str, a: EngineArgs) -> Estimate:
    notes: list[str] = []
    python = engine == "llama-cpp-python"
    if a.ctx:
        ctx = a.ctx
    elif a.ctx == 0:
        ctx = info.context_length
    elif python:
        ctx = LLAMA_CPP_PYTHON_CTX
        notes.append(f"context not set: llama-cpp-python's default {ctx}")
    else:
        ctx = min(info.context_length, CONTEXT_CAP)
        if ctx < info.context_length:
            notes.append(
                f"context not set: assumed {ctx} of the trained {info.context_length}; "
                "pass --ctx-size to make this exact"
            )
    ngl = a.n_gpu_layers
    if ngl is None:
        ngl = LLAMA_CPP_PYTHON_NGL if python else -1
        if python:
            notes.append("--n_gpu_layers not set: llama-cpp-python keeps every layer on the CPU")
    on_gpu = info.layers if ngl < 0 else min(ngl, info.layers)
    share = on_gpu / info.layers if info.layers else 1.0

    head_dim = info.embedding_length // info.heads if info.heads else 0
    k_dim, v_dim = info.key_length or head_dim, info.value_length or head_dim
    per_token_layer = info.kv_heads * (
        k_dim * bytes_per_element(a.cache_type_k) + v_dim * bytes_per_element(a.cache_type_v)
    )
    kv = math.ceil(on_gpu * per_token_layer * ctx)
    weights = math.ceil(info.size * share)
    compute = COMPUTE_ALLOWANCE + UBATCH * (info.vocab_size or 0) * 4
    return Estimate(
        bytes=weights + kv + compute,
        source="gguf",
        per_gpu=compute,
        parts={"weights": weights, "kv_cache": kv, "compute": compute},
        notes=(*notes, f"{on_gpu}/{info.layers} layers on the GPU, context {ctx}"),
    )


def _vllm(a: EngineArgs, info: GgufInfo | None, size: int | None, vram: int | None) -> Estimate:
    fraction = a.gpu_memory_utilization or VLLM_DEFAULT_UTILIZATION
    weights = size if size is not None else (info.size if info is not None else 0)
    need = math.ceil(weights * SAFETENSORS_FACTOR) + ENGINE_OVERHEAD if weights else 0
    notes = ["vLLM takes --gpu-memory-utilization * total on each GPU it uses"]
    if vram is not None:
        notes.append("spec.vram ignored: --gpu-memory-utilization is set in args")
    return Estimate(
        bytes=need,
        source="vllm",
        per_gpu=ENGINE_OVERHEAD if need else 0,
        fraction=fraction,
        parts={"weights*1.2+engine": need} if need else None,
        notes=tuple(notes),
    )
