"""A fake OpenAI backend that costs as little as a Python server can: a raw ASGI app on uvicorn
(uvloop and httptools when installed), so that a benchmark measures the proxy, not the backend.

    python tests/bench/fast_backend.py --host 127.0.0.1 --port 0 [--chunks 100 --interval 0.01]

Answers ``POST /v1/chat/completions`` (and any other POST) with one fixed chat completion, or,
for ``"stream": true``, with ``--chunks`` SSE chunks ``--interval`` seconds apart (each says
when it was sent), then a usage chunk and ``data: [DONE]``; ``GET /health`` answers 200. The
request body is read but only looked at for ``"stream": true``. The first line on stdout is
``listening PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from typing import Any

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "a short benchmark reply"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 6, "completion_tokens": 4, "total_tokens": 10},
    }
).encode()
JSON_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(COMPLETION)).encode()),
]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
# "sent": when the backend wrote the chunk (time.time()), so a client can tell how long each
# chunk took to reach it.
CHUNK = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench","choices":[{"index":0,"delta":{"content":" word"},'
    b'"finish_reason":null}],"usage":null,"sent":%.6f}\n\n'
)
LAST = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"bench","choices":[],"usage":{"prompt_tokens":6,"completion_tokens":%d,'
    b'"total_tokens":%d}}\n\ndata: [DONE]\n\n'
)


def make_app(chunks: int, interval: float) -> Any:
    last = LAST % (chunks, chunks + 6)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["method"] != "POST":
            await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
            await send({"type": "http.response.body", "body": COMPLETION})
            return
        if b'"stream":true' not in body.replace(b" ", b""):
            await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
            await send({"type": "http.response.body", "body": COMPLETION})
            return
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        for _ in range(chunks):
            chunk = CHUNK % time.time()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if interval:
                await asyncio.sleep(interval)
        await send({"type": "http.response.body", "body": last})

    return app


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=16, help="SSE chunks per streamed reply")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between chunks")
    parser.add_argument("--model-name", default="bench", help="accepted for Engine commands")
    args = parser.parse_args()

    import uvicorn

    # IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only when the listener names it.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    config = uvicorn.Config(
        make_app(args.chunks, args.interval),
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=1024,
        timeout_keep_alive=300,
    )
    print(f"listening {sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
