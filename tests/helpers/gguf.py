"""A real GGUF for tests: llama architecture, random f16 weights, a small byte-level vocabulary.

llama.cpp loads and runs it (the text it generates is noise); its header is a real one, so the
VRAM estimate and the weights code read what they would read from a downloaded model. The size
follows the shape: the defaults make about 3.4 MB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np


@dataclass(frozen=True)
class GgufShape:
    """A llama model's shape: what :func:`write_test_gguf` writes and a test reads back."""

    embd: int = 256
    layers: int = 2
    ff: int = 688
    heads: int = 4
    kv_heads: int = 2
    ctx: int = 4096


def vocabulary() -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and token types: 3 specials, the 256 byte tokens, then each printable
    ASCII character with and without SentencePiece's space mark (447 tokens)."""
    tokens, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]
    for byte in range(256):
        tokens.append(f"<0x{byte:02X}>")
        scores.append(0.0)
        types.append(6)  # byte
    for rank, char in enumerate(chr(c) for c in range(33, 127)):
        for piece in (char, "\u2581" + char):
            tokens.append(piece)
            scores.append(-float(rank))
            types.append(1)  # normal
    return tokens, scores, types


def write_test_gguf(path: Path, shape: GgufShape = GgufShape(), seed: int = 0) -> Path:
    """Write the model to ``path`` (same ``seed``, same bytes) and return ``path``."""
    rng = np.random.default_rng(seed)
    head_dim = shape.embd // shape.heads
    kv_dim = shape.kv_heads * head_dim
    tokens, scores, types = vocabulary()

    def weights(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(shape.embd, dtype=np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("random-test-llama")
    writer.add_context_length(shape.ctx)
    writer.add_embedding_length(shape.embd)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ff)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    writer.add_tensor("token_embd.weight", weights(len(tokens), shape.embd))
    for i in range(shape.layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.attn_q.weight", weights(shape.embd, shape.embd))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weights(kv_dim, shape.embd))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weights(kv_dim, shape.embd))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weights(shape.embd, shape.embd))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", norm())
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weights(shape.ff, shape.embd))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weights(shape.ff, shape.embd))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weights(shape.embd, shape.ff))
    writer.add_tensor("output_norm.weight", norm())
    writer.add_tensor("output.weight", weights(len(tokens), shape.embd))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
