#!/usr/bin/env python3
"""A fake OpenAI-compatible model server, standard library only.

Tests start it as a real process where a real deployment would run llama-server or vLLM: the
process runtime runs it directly, the docker runtime inside a bare Debian image that has nothing
but python3 (so: no third-party imports, no project imports). It answers the OpenAI routes with
deterministic text that names the backend (model, port, pid) and echoes the last user message,
and it can misbehave on request: load slowly, never get healthy, crash, stream slowly, fail to
start. `/debug/*` routes let tests see what reached it (headers, body, concurrency, environment).

    python tests/fakebackend.py --host 127.0.0.1 --port 8123 --model-name foo --tokens 8

`--port 0` binds a free port; the startup line on stderr names it:
`fakebackend: listening on http://127.0.0.1:PORT model=foo pid=PID`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CRASH_EXIT_CODE = 3


def log(message: str) -> None:
    """One line on stderr: what log-tail tests read."""
    print(f"fakebackend: {message}", file=sys.stderr, flush=True)


def reply_tokens(model: str, port: int, prompt: str, n: int) -> list[str]:
    """The n tokens of a reply: identity words then the prompt's words, cycled.

    Joined with "" they give e.g. "foo@8123 pid=42 echo: hello foo@8123 ..."; every token but the
    first carries its leading space, so streamed deltas concatenate to the plain reply's text.
    """
    words = [f"{model}@{port}", f"pid={os.getpid()}", "echo:", *(prompt.split() or ["(empty)"])]
    return [(" " if i else "") + words[i % len(words)] for i in range(max(n, 0))]


def count_words(text: str) -> int:
    """Our 'tokenizer': whitespace-separated words (deterministic, good enough for usage)."""
    return len(text.split())


def embed(text: str, dim: int) -> list[float]:
    """A unit vector derived from sha256 of the text: the same text always gives the same vector."""
    raw = b""
    block = 0
    while len(raw) < 4 * dim:
        raw += hashlib.sha256(f"{block}:{text}".encode()).digest()
        block += 1
    values = [v / 2**31 - 1.0 for v in struct.unpack(f"<{dim}I", raw[: 4 * dim])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def message_text(content: Any) -> str:
    """Text of a chat message's content: a string, or a list of OpenAI content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class State:
    """Everything the handler threads share, guarded by one lock."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lock = threading.Condition()
        self.started = time.monotonic()
        self.port = args.port
        self.fail_health = args.fail_health
        self.requests = 0  # /v1/* requests received
        self.posts = 0  # POST /v1/* requests received (what --crash-after counts)
        self.completed = 0
        self.disconnects = 0  # clients that went away mid-response
        self.in_flight = 0
        self.max_in_flight = 0
        self.last_request: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []  # the last 1000 /v1/* requests, oldest first
        self.stopping = False

    def ready(self) -> bool:
        return time.monotonic() - self.started >= self.args.startup_delay

    def stats(self) -> dict[str, Any]:
        """`requests`: /v1/* requests received; `completed`: POST /v1/* requests finished."""
        env_names = ["CUDA_VISIBLE_DEVICES", *self.args.echo_env]
        return {
            "pid": os.getpid(),
            "port": self.port,
            "model": self.args.model_name,
            "model_path": self.args.model,
            "argv": sys.argv[1:],
            "ready": self.ready(),
            "requests": self.requests,
            "completed": self.completed,
            "disconnects": self.disconnects,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "env": {name: os.environ.get(name) for name in env_names},
            "tensor_split": self.args.tensor_split,
        }


class Handler(BaseHTTPRequestHandler):
    """One connection; HTTP/1.1 keep-alive, streams sent with chunked transfer encoding."""

    protocol_version = "HTTP/1.1"
    server_version = "fakebackend/1.0"
    state: State  # set on the subclass made in serve()

    def setup(self) -> None:
        super().setup()
        # Small writes (headers, then body; one SSE event at a time) must not wait for ACKs.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log(f'{self.client_address[0]} "{self.requestline}" {format % args}')

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.path != "/health":  # health polls would drown the interesting lines
            self.log_message("%s", code)

    # ---- plumbing -------------------------------------------------------------------------

    def send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def send_error_json(self, status: int, message: str, kind: str = "invalid_request_error"):
        self.send_json(status, {"error": {"message": message, "type": kind, "code": status}})

    def read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return body
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_event(self, payload: str) -> None:
        data = f"data: {payload}\n\n".encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))  # one write per event, flushed
        self.wfile.flush()

    def send_partial_event(self, payload: str) -> None:
        """The first half of an event, as a backend dying in the middle of a write leaves it."""
        data = f"data: {payload}".encode()[: len(payload) // 2]
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_stream(self) -> None:
        self.send_event("[DONE]")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # ---- routes ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        state = self.state
        if self.path == "/health":
            if state.fail_health:
                self.send_json(500, {"status": "error", "message": "health set to fail"})
            elif not state.ready():
                self.send_json(503, {"status": "loading", "message": "Loading model"})
            else:
                self.send_json(200, {"status": "ok"})
        elif self.path == "/v1/models":
            with state.lock:
                state.requests += 1
            model = {"id": state.args.model_name, "object": "model", "owned_by": "fakebackend"}
            self.send_json(200, {"object": "list", "data": [{**model, "created": 0}]})
        elif self.path.startswith("/debug/"):
            with state.lock:  # snapshot under the lock, send outside it
                views = {
                    "stats": state.stats,
                    "last-request": lambda: state.last_request,
                    "requests": lambda: list(state.history),
                }
                view = views.get(self.path.removeprefix("/debug/"))
                snapshot = view() if view else None
            if view:
                self.send_json(200, snapshot)
            else:
                self.send_error_json(404, f"no route GET {self.path}", "not_found_error")
        else:
            self.send_error_json(404, f"no route GET {self.path}", "not_found_error")

    def do_POST(self) -> None:
        state = self.state
        raw = self.read_body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        if self.path == "/debug/health":  # {"fail": true|false}: make /health fail or recover
            state.fail_health = bool((body or {}).get("fail"))
            self.send_json(200, {"fail": state.fail_health})
            return
        if not self.path.startswith("/v1/"):
            self.send_error_json(404, f"no route POST {self.path}", "not_found_error")
            return
        record = {
            "method": "POST",
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "time": time.time(),
        }
        with state.lock:
            state.requests += 1
            state.posts += 1
            number = state.posts
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
            state.last_request = record
            state.history = [*state.history[-999:], record]
        try:
            self.handle_api(body, raw, number)
        except (BrokenPipeError, ConnectionResetError):
            log(f'client went away during "{self.requestline}"')
            self.close_connection = True
            with state.lock:
                state.disconnects += 1
        finally:
            with state.lock:
                state.in_flight -= 1
                state.completed += 1
                state.lock.notify_all()
        crash_after = state.args.crash_after
        if crash_after == number and not state.args.crash_mid_stream:
            log(f"crashing after {number} requests (--crash-after)")
            os._exit(CRASH_EXIT_CODE)

    def handle_api(self, body: Any, raw: bytes, number: int) -> None:
        state, args = self.state, self.state.args
        if not state.ready():
            self.send_error_json(503, "Loading model", "unavailable_error")
            return
        crash_now = args.crash_mid_stream and number == (args.crash_after or 1)
        if crash_now and not (isinstance(body, dict) and body.get("stream")):
            log(f"crashing during request {number} (--crash-mid-stream)")
            os._exit(CRASH_EXIT_CODE)
        known = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
        if self.path in known and not isinstance(body, dict):
            self.send_error_json(400, "request body must be a JSON object")
            return
        if self.path == "/v1/chat/completions":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                self.send_error_json(400, "'messages' must be a non-empty list")
                return
            users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            prompt = message_text(users[-1].get("content")) if users else ""
            all_text = " ".join(
                message_text(m.get("content")) for m in messages if isinstance(m, dict)
            )
            self.generate(body, prompt, count_words(all_text), chat=True, crash=crash_now)
        elif self.path == "/v1/completions":
            prompt = body.get("prompt", "")
            if isinstance(prompt, list):
                prompt = str(prompt[0]) if prompt else ""
            self.generate(body, str(prompt), count_words(str(prompt)), chat=False, crash=crash_now)
        elif self.path == "/v1/embeddings":
            self.embeddings(body)
        else:  # any other OpenAI-ish POST: say what arrived, so proxy tests can check it
            ctype = self.headers.get("Content-Type", "")
            self.send_json(
                200,
                {
                    "object": "echo",
                    "path": self.path,
                    "content_type": ctype,
                    "bytes": len(raw),
                    "model": args.model_name,
                    "port": state.port,
                },
            )

    def generate(self, body: dict, prompt: str, prompt_tokens: int, chat: bool, crash: bool):
        args = self.state.args
        limit = body.get("max_completion_tokens", body.get("max_tokens"))
        n = int(limit) if isinstance(limit, int) else args.tokens
        finish = "length" if isinstance(limit, int) else "stop"
        tokens = reply_tokens(args.model_name, self.state.port, prompt, n)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n,
            "total_tokens": prompt_tokens + n,
        }
        kind = "chat.completion" if chat else "text_completion"
        base = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{os.getpid()}-{time.monotonic_ns()}",
            "created": int(time.time()),
            "model": args.model_name,
        }

        def choice(text: str | None, finish_reason: str | None, delta: bool) -> dict[str, Any]:
            if not chat:
                return {
                    "index": 0,
                    "text": text or "",
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            if not delta:
                return {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            return {
                "index": 0,
                "delta": {} if text is None else {"content": text},
                "logprobs": None,
                "finish_reason": finish_reason,
            }

        if not body.get("stream"):
            time.sleep(args.request_delay)
            reply = choice("".join(tokens), finish, delta=False)
            self.send_json(200, {**base, "object": kind, "choices": [reply], "usage": usage})
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        chunk = {**base, "object": "chat.completion.chunk" if chat else kind}
        if include_usage:
            chunk["usage"] = None

        def event(choices: list[dict[str, Any]], **extra: Any) -> None:
            self.send_event(json.dumps({**chunk, "choices": choices, **extra}))

        self.start_stream()
        if chat:
            event(
                [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
        for i, token in enumerate(tokens):
            if crash and i == 2 and args.crash_mid_event:
                log("crashing in the middle of an event (--crash-mid-event)")
                self.send_partial_event(json.dumps({**chunk, "choices": []}))
                os._exit(CRASH_EXIT_CODE)
            if crash and i == 2:
                log("crashing mid-stream (--crash-mid-stream)")
                os._exit(CRASH_EXIT_CODE)
            if i:
                time.sleep(args.token_delay)
            event([choice(token, None, delta=True)])
        event([choice(None if chat else "", finish, delta=True)])
        if include_usage:
            event([], usage=usage)
        self.end_stream()

    def embeddings(self, body: dict) -> None:
        dim = self.state.args.embedding_dim
        inputs = body.get("input")
        if not isinstance(inputs, list) or (inputs and isinstance(inputs[0], int)):
            inputs = [inputs]  # one string, or one list of token ids
        texts = [x if isinstance(x, str) else json.dumps(x) for x in inputs]
        as_base64 = body.get("encoding_format") == "base64"  # the openai client asks for this
        data = []
        for i, text in enumerate(texts):
            vector: Any = embed(text, dim)
            if as_base64:
                vector = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        tokens = sum(count_words(t) for t in texts)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        model = self.state.args.model_name
        self.send_json(200, {"object": "list", "data": data, "model": model, "usage": usage})


class Server(ThreadingHTTPServer):
    request_queue_size = 128  # bursts of concurrent connects (wake tests, benchmarks)
    block_on_close = False  # idle keep-alive connections must not hold up the exit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=env("FAKEBACKEND_HOST", "127.0.0.1"))
    p.add_argument(
        "--port",
        type=int,
        default=int(env("FAKEBACKEND_PORT", "8000")),
        help="0 = any free port (named in the startup line)",
    )
    p.add_argument("--model-name", default="fake-model", help="the model id it serves")
    p.add_argument("--model", default=None, help="a model path; only reported in /debug/stats")
    p.add_argument("--tokens", type=int, default=8, help="tokens per reply unless max_tokens")
    p.add_argument("--embedding-dim", type=int, default=16)
    p.add_argument(
        "--startup-delay",
        type=float,
        default=0.0,
        help="listen at once, but /health answers 503 for this long",
    )
    p.add_argument("--listen-delay", type=float, default=0.0, help="wait this long before binding")
    p.add_argument("--token-delay", type=float, default=0.0, help="sleep between streamed tokens")
    p.add_argument(
        "--request-delay", type=float, default=0.0, help="sleep before a non-streamed reply"
    )
    p.add_argument("--fail-health", action="store_true", help="/health always answers 500")
    p.add_argument(
        "--crash-after",
        type=int,
        default=None,
        metavar="N",
        help=f"exit {CRASH_EXIT_CODE} after the Nth POST /v1/* request is answered",
    )
    p.add_argument(
        "--crash-mid-stream",
        action="store_true",
        help="die during the Nth POST instead (N from --crash-after, default 1): "
        "after 2 tokens of a stream, or before answering a non-streamed one",
    )
    p.add_argument(
        "--crash-mid-event",
        action="store_true",
        help="with --crash-mid-stream: send the first half of an event before dying",
    )
    p.add_argument(
        "--exit-immediately",
        type=int,
        default=None,
        metavar="CODE",
        help="log a fatal error and exit with CODE (a failed start)",
    )
    p.add_argument("--ignore-sigterm", action="store_true", help="to test SIGKILL escalation")
    p.add_argument(
        "--term-grace",
        type=float,
        default=30.0,
        help="on SIGTERM, wait at most this long for in-flight requests",
    )
    p.add_argument(
        "--tensor-split",
        default=None,
        metavar="A,B",
        help="accepted like llama-server's (placement appends it); reported in /debug/stats",
    )
    p.add_argument(
        "--echo-env",
        action="append",
        default=[],
        metavar="NAME",
        help="report this env var in /debug/stats (repeatable)",
    )
    return p.parse_args(argv)


def serve(args: argparse.Namespace) -> int:
    """Run until SIGTERM/SIGINT; returns the exit code."""
    log(f"starting: model={args.model_name} pid={os.getpid()} argv={sys.argv[1:]}")
    if args.exit_immediately is not None:
        log(
            f"FATAL: failed to load model '{args.model_name}': simulated failure "
            f"(--exit-immediately {args.exit_immediately})"
        )
        return args.exit_immediately
    time.sleep(args.listen_delay)

    state = State(args)
    handler = type("BoundHandler", (Handler,), {"state": state})
    server = Server((args.host, args.port), handler)
    state.port = server.server_address[1]
    state.started = time.monotonic()

    def drain_and_stop() -> None:
        deadline = time.monotonic() + args.term_grace
        with state.lock:
            while state.in_flight and time.monotonic() < deadline:
                state.lock.wait(0.1)
        server.shutdown()

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if args.ignore_sigterm and signum == signal.SIGTERM:
            log(f"ignoring {name} (--ignore-sigterm)")
        elif not state.stopping:
            state.stopping = True
            log(f"received {name}, finishing {state.in_flight} in-flight request(s)")
            threading.Thread(target=drain_and_stop, daemon=True).start()

    if threading.current_thread() is threading.main_thread():  # serve() may run in a thread
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    url = f"http://{args.host}:{state.port}"
    log(f"listening on {url} model={args.model_name} pid={os.getpid()}")
    if args.startup_delay:
        timer = threading.Timer(args.startup_delay, log, ["model loaded, ready"])
        timer.daemon = True
        timer.start()
    server.serve_forever(poll_interval=0.1)
    server.server_close()
    log("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    return serve(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
