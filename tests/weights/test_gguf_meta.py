"""GGUF header metadata read back from a downloaded file."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.weights import HubSettings, MirrorServer, fetch, read_gguf_metadata

from .conftest import GGUF_SHAPE
from .hubgen import HubRepos


def test_metadata_of_a_downloaded_gguf(
    cache: Path, settings: HubSettings, hub: MirrorServer, repos: HubRepos, gguf_bytes: bytes
) -> None:
    repos.commit("org/tiny-GGUF", {"tiny-f16.gguf": gguf_bytes})
    result = fetch(cache, "org/tiny-GGUF", "main", ["*.gguf"], settings)

    meta = read_gguf_metadata(result.model_path)

    assert meta["architecture"] == "llama"
    assert meta["block_count"] == GGUF_SHAPE.layers
    assert meta["context_length"] == GGUF_SHAPE.ctx
    assert meta["embedding_length"] == GGUF_SHAPE.embd
    assert meta["head_count"] == GGUF_SHAPE.heads
    assert meta["head_count_kv"] == GGUF_SHAPE.kv_heads
    assert meta["quantization"] == "F16" and meta["file_type"] == 1
    assert meta["file_size"] == len(gguf_bytes)
    assert 0 < meta["tensor_bytes"] < len(gguf_bytes)
    assert meta["parameters"] * 2 <= meta["tensor_bytes"]  # f16 weights, f32 norms
    assert meta["vocab_size"] > 256 and meta["split_count"] is None


def test_a_file_that_is_not_gguf_is_a_value_error(tmp_path: Path) -> None:
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError):
        read_gguf_metadata(bogus)
