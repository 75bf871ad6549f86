"""The VRAM estimate, checked against a real GGUF header (tests/helpers/gguf.py writes it)."""

from __future__ import annotations

import re

import gguf
import pytest

from reconciler.gpus.vram import (
    COMPUTE_ALLOWANCE,
    CONTEXT_CAP,
    ENGINE_OVERHEAD,
    CannotEstimate,
    EngineArgs,
    GgufInfo,
    estimate,
    parse_engine_args,
)
from reconciler.units import GiB, MiB
from tests.helpers.gguf import GgufShape, write_test_gguf

SHAPE = GgufShape(embd=256, layers=4, ff=688, heads=8, kv_heads=2, ctx=4096)


@pytest.fixture(scope="module")
def info(tmp_path_factory: pytest.TempPathFactory) -> GgufInfo:
    path = write_test_gguf(tmp_path_factory.mktemp("gguf") / "test.gguf", SHAPE)
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    return GgufInfo.from_gguf_fields(fields, path.stat().st_size)


def kv_f16(info: GgufInfo, ctx: int, layers: int | None = None) -> int:
    head_dim = info.embedding_length // info.heads
    return (layers or info.layers) * info.kv_heads * head_dim * 2 * 2 * ctx


def test_metadata_read_from_a_real_gguf(info: GgufInfo) -> None:
    assert (info.architecture, info.layers, info.context_length) == ("llama", 4, 4096)
    assert (info.heads, info.kv_heads, info.embedding_length) == (8, 2, 256)
    assert info.vocab_size == 447  # 3 specials + 256 bytes + 2 x 94 printable pieces
    assert info.size > 1_000_000


def test_gguf_formula_with_ctx_size(info: GgufInfo) -> None:
    est = estimate(args=["--ctx-size", "8192"], gguf_info=info)
    kv = kv_f16(info, 8192)
    assert kv == 4 * 2 * 32 * 2 * 2 * 8192
    compute = COMPUTE_ALLOWANCE + 512 * 447 * 4
    assert est.parts == {"weights": info.size, "kv_cache": kv, "compute": compute}
    assert est.bytes == info.size + kv + compute
    assert (est.source, est.per_gpu, est.fraction) == ("gguf", compute, None)


def test_partial_offload_scales_weights_and_kv(info: GgufInfo) -> None:
    est = estimate(args=["-ngl", "1", "-c", "1024"], gguf_info=info)
    assert est.parts["weights"] == -(-info.size // 4)
    assert est.parts["kv_cache"] == kv_f16(info, 1024, layers=1)
    assert "1/4 layers on the GPU, context 1024" in est.notes
    assert estimate(args=["-ngl", "99", "-c", "1024"], gguf_info=info).parts["weights"] == info.size
    assert (
        estimate(args=["-ngl", "all", "-c", "1024"], gguf_info=info).parts["weights"] == info.size
    )


def test_quantised_kv_cache(info: GgufInfo) -> None:
    f16 = estimate(args=["-c", "4096"], gguf_info=info).parts["kv_cache"]
    q8 = estimate(args=["-c", "4096", "-ctk", "q8_0", "-ctv", "q8_0"], gguf_info=info)
    assert q8.parts["kv_cache"] == f16 * 34 // 64  # q8_0: 34 bytes per 32 elements vs 2 each
    q4k = estimate(args=["-c", "4096", "--cache-type-k=q4_0"], gguf_info=info)
    assert q4k.parts["kv_cache"] == f16 // 2 + f16 // 2 * 18 // 64


def test_context_defaults(info: GgufInfo) -> None:
    # no --ctx-size: the trained context, which this model has under the cap
    assert estimate(gguf_info=info).parts["kv_cache"] == kv_f16(info, 4096)
    # a long-context model is capped, and says so
    long = GgufInfo.from_mapping({**_mapping(info), "context_length": 131072})
    est = estimate(gguf_info=long)
    assert est.parts["kv_cache"] == kv_f16(long, CONTEXT_CAP)
    assert any("assumed 32768 of the trained 131072" in n for n in est.notes)
    # -c 0 means the trained context in llama.cpp: no cap then
    assert estimate(args=["-c", "0"], gguf_info=long).parts["kv_cache"] == kv_f16(long, 131072)


def test_llama_cpp_python_defaults(info: GgufInfo) -> None:
    est = estimate(engine="llama-cpp-python", gguf_info=info)
    assert est.parts["weights"] == 0 and est.parts["kv_cache"] == 0  # n_gpu_layers defaults to 0
    on_gpu = estimate(engine="llama-cpp-python", args=["--n_gpu_layers", "-1"], gguf_info=info)
    assert on_gpu.parts["weights"] == info.size
    assert on_gpu.parts["kv_cache"] == kv_f16(info, 2048)  # its n_ctx default


def _mapping(info: GgufInfo) -> dict:
    return {k: getattr(info, k) for k in info.__dataclass_fields__}


def test_mapping_from_the_downloads_helper() -> None:
    m = {
        "architecture": "qwen2",
        "layers": 28,
        "context_length": 32768,
        "heads": 28,
        "kv_heads": 4,
        "embedding_length": 3584,
        "size": 4_680_000_000,
    }
    info = GgufInfo.from_mapping(m)
    assert info.key_length is None and info.vocab_size is None
    est = estimate(args=["-c", "8192"], gguf_info=info)
    # Qwen2.5-7B Q4_K_M at 8k: 28 x 4 x 128 x 2 x 2 x 8192 = 448 MiB of KV
    assert est.parts["kv_cache"] == 448 * MiB
    assert 5.0 * GiB < est.bytes < 5.6 * GiB
    per_layer = GgufInfo.from_mapping({**m, "kv_heads": [4, 4, 8]})
    assert per_layer.kv_heads == 8  # per-layer lists count at their max


def test_calibration_point_from_an_h100() -> None:
    """GPU.md: the 16-layer, 2048-wide test GGUF with -c 8192 showed 2.3 GiB in NVML."""
    embd, layers, ff, heads, kv_heads, vocab = 2048, 16, 5632, 32, 8, 447
    head_dim = embd // heads
    params = (
        layers * (2 * embd * embd + 2 * kv_heads * head_dim * embd + 3 * embd * ff)
        + 2 * vocab * embd
    )
    info = GgufInfo("llama", layers, 4096, heads, kv_heads, embd, params * 2, vocab_size=vocab)
    est = estimate(args=["-ngl", "99", "-c", "8192"], gguf_info=info)
    assert abs(est.bytes - 2.3 * GiB) < 0.1 * 2.3 * GiB, est.describe()


def test_spec_vram_wins(info: GgufInfo) -> None:
    est = estimate(vram=6 * GiB, args=["-c", "8192"], gguf_info=info)
    assert (est.bytes, est.source, est.per_gpu) == (6 * GiB, "spec.vram", 0)
    assert est.describe() == "6.0 GiB (spec.vram)"


def test_safetensors_and_vllm() -> None:
    st = estimate(engine="custom", weights_size=10 * GiB)
    assert st.bytes == 12 * GiB + ENGINE_OVERHEAD and st.source == "safetensors"
    v = estimate(engine="vllm", weights_size=10 * GiB)
    assert (v.fraction, v.bytes, v.source) == (0.9, 12 * GiB + ENGINE_OVERHEAD, "vllm")
    assert estimate(engine="vllm", args=["--gpu-memory-utilization", "0.5"]).fraction == 0.5
    # spec.vram for vLLM: claims that; placement then sets --gpu-memory-utilization to match
    assert estimate(engine="vllm", vram=20 * GiB).fraction is None
    with pytest.raises(CannotEstimate, match=r"set spec\.vram"):
        estimate()


def test_parse_engine_args() -> None:
    assert parse_engine_args(["--port", "1", "-c", "4096", "--n-gpu-layers=20", "-ts", "3,1"]) == (
        EngineArgs(ctx=4096, n_gpu_layers=20, tensor_split=(3.0, 1.0))
    )
    assert parse_engine_args(["--tensor_split", "0.6", "0.4", "--type_k", "8"]) == EngineArgs(
        tensor_split=(0.6, 0.4), cache_type_k="q8_0"
    )
    assert parse_engine_args(["-tp", "2", "--gpu-memory-utilization", "0.8"]) == EngineArgs(
        tensor_parallel=2, gpu_memory_utilization=0.8
    )
    assert parse_engine_args(["-c", "1", "-c", "2"]).ctx == 2  # the last one wins
    for bad, message in [
        (["--ctx-size", "big"], "--ctx-size: invalid value 'big'"),
        (["-ctk", "q9_9"], "-ctk: invalid value 'q9_9'"),
        (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization: invalid value '1.5'"),
        (["-c"], "-c: missing value"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_engine_args(bad)
