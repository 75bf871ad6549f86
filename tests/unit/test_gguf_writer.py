"""The test GGUF (tests/helpers/gguf.py) is a model llama.cpp really loads and runs.

Skipped without ``llama-cpp-python`` (the ``quickstart`` extra; CI installs it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.gguf import GgufShape, vocabulary, write_test_gguf

pytestmark = pytest.mark.llama


def test_llama_cpp_loads_it_and_generates(tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    shape = GgufShape(embd=64, layers=2, ff=128, heads=4, kv_heads=2, ctx=512)
    model = llama_cpp.Llama(
        str(write_test_gguf(tmp_path / "tiny.gguf", shape)), n_ctx=256, verbose=False
    )
    assert (model.n_vocab(), model.n_ctx()) == (len(vocabulary()[0]), 256)
    reply = model("Hello", max_tokens=4, temperature=0)
    assert reply["usage"]["completion_tokens"] >= 1


def test_the_same_seed_writes_the_same_bytes(tmp_path: Path) -> None:
    shape = GgufShape(embd=32, layers=1, ff=64, heads=4, kv_heads=2, ctx=256)
    one = write_test_gguf(tmp_path / "one.gguf", shape).read_bytes()
    assert write_test_gguf(tmp_path / "two.gguf", shape).read_bytes() == one
    assert write_test_gguf(tmp_path / "three.gguf", shape, seed=1).read_bytes() != one
