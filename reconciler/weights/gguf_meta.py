"""GGUF header metadata for VRAM estimates and ``status``: shape, context, quantisation, size.

Read with the ``gguf`` package's reader, which maps the file and parses only the header and tensor
index (no weights are read). Returns a flat dict of plain values that stores as JSON as it is.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import gguf

GgufMeta = dict[str, Any]


def read_gguf_metadata(path: str | Path) -> GgufMeta:
    """Architecture, layers, context length, heads, quantisation and sizes of one GGUF file.

    Keys absent from the file are ``None``. For a split model (``-00001-of-0000N.gguf``) the first
    shard carries the metadata and ``split_count`` says how many shards to add up for the size.
    Raises ``ValueError`` for a file that is not GGUF.
    """
    path = Path(path)
    reader = gguf.GGUFReader(path, "r")
    arch = _scalar(reader, gguf.Keys.General.ARCHITECTURE)

    def llm(key: str) -> Any:
        return _scalar(reader, key.format(arch=arch)) if arch else None

    file_type = _scalar(reader, gguf.Keys.General.FILE_TYPE)
    tokens = reader.fields.get(gguf.Keys.Tokenizer.LIST)
    return {
        "architecture": arch,
        "name": _scalar(reader, gguf.Keys.General.NAME),
        "block_count": llm(gguf.Keys.LLM.BLOCK_COUNT),
        "context_length": llm(gguf.Keys.LLM.CONTEXT_LENGTH),
        "embedding_length": llm(gguf.Keys.LLM.EMBEDDING_LENGTH),
        "feed_forward_length": llm(gguf.Keys.LLM.FEED_FORWARD_LENGTH),
        "head_count": llm(gguf.Keys.Attention.HEAD_COUNT),
        "head_count_kv": llm(gguf.Keys.Attention.HEAD_COUNT_KV),
        "key_length": llm(gguf.Keys.Attention.KEY_LENGTH),
        "value_length": llm(gguf.Keys.Attention.VALUE_LENGTH),
        "expert_count": llm(gguf.Keys.LLM.EXPERT_COUNT),
        "expert_used_count": llm(gguf.Keys.LLM.EXPERT_USED_COUNT),
        "vocab_size": llm(gguf.Keys.LLM.VOCAB_SIZE) or (len(tokens.data) if tokens else None),
        "file_type": file_type,
        "quantization": _quantization(reader, file_type),
        "parameters": sum(int(t.n_elements) for t in reader.tensors),
        "tensor_bytes": sum(int(t.n_bytes) for t in reader.tensors),
        "file_size": path.stat().st_size,
        "split_count": _scalar(reader, gguf.Keys.Split.LLM_KV_SPLIT_COUNT),
        "split_no": _scalar(reader, gguf.Keys.Split.LLM_KV_SPLIT_NO),
    }


def _scalar(reader: gguf.GGUFReader, key: str) -> Any:
    """A field's value; a per-layer array (some architectures vary heads by layer) gives its max."""
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.contents()
    if isinstance(value, list):
        numbers = [v for v in value if isinstance(v, int | float)]
        return max(numbers) if numbers else None
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    return value


def _quantization(reader: gguf.GGUFReader, file_type: int | None) -> str | None:
    """``Q4_K_M``, ``F16``…: the declared file type, else the tensor type holding the most bytes."""
    if file_type is not None:
        try:
            name = gguf.LlamaFileType(file_type).name
        except ValueError:
            name = None
        if name and name != "GUESSED":
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    weight: Counter[str] = Counter()
    for tensor in reader.tensors:
        weight[gguf.GGMLQuantizationType(tensor.tensor_type).name] += int(tensor.n_bytes)
    return weight.most_common(1)[0][0] if weight else None
