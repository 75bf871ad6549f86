"""Loading progress a chat UI can show (opt-in: ``Node.proxy.loadingAsReasoning`` or a Model's
``loadingAsReasoning``), as llama-swap's ``sendLoadingState`` does.

A streaming chat completion that waits for its model normally gets ``: loading`` SSE comments,
which keep the connection alive but which no UI shows. With the opt-in it gets
``reasoning_content`` deltas instead: UIs that render reasoning (Open WebUI, LibreChat…) show
"Loading qwen… 12 s" in the thinking box while the model starts; the answer follows as usual.
"""

from __future__ import annotations

import time

import msgspec

_encoder = msgspec.json.Encoder()


def reasoning_event(model: str, text: str, created: int | None = None) -> bytes:
    """One SSE event holding a chat-completion chunk whose delta is ``reasoning_content``."""
    chunk = {
        "id": f"chatcmpl-loading-{model}",
        "object": "chat.completion.chunk",
        "created": created if created is not None else int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "reasoning_content": text},
                "finish_reason": None,
            }
        ],
    }
    return b"data: " + _encoder.encode(chunk) + b"\n\n"


def progress_text(model: str, waited: float, first: bool) -> str:
    """``Loading qwen…`` first, then `` 5 s`` … as it goes on (appended by the UI)."""
    if first:
        return f"Loading {model}…"
    return f" {waited:.0f} s…"
