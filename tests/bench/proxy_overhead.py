"""What the proxy adds: the same requests straight to a fast fake backend and through the proxy.

    PYTHONPATH=. python tests/bench/proxy_overhead.py [--requests 2000] [--rounds 2] [--run]

Starts a fake backend (no delays) and, in a separate process, the proxy (uvicorn + the app,
uvloop/httptools when installed) with a static gateway that says the model is Ready. With
``--run`` the proxy is the real ``modelplane run`` instead (reconcile loop, request log, idle
clocks and all), serving a pinned fake-backend model from a temporary manifest directory. A small
keep-alive HTTP/1.1 load generator (raw asyncio streams, so the client costs the same on both
paths) sends chat completions, plain and streamed, at concurrency 1 and 64, alternating direct
and proxied rounds. Prints per case: latency p50/p99 direct and proxied, the added latency,
the added time to the first body chunk, and the throughput ratio.

A script, not a test: numbers depend on the machine (and on what else runs on it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MODEL = "bench"


# --- the proxy process ---------------------------------------------------------------------------


class StaticGateway:
    """One model, always Ready at the backend's endpoint; the accounting a real gateway does is
    kept as cheap in-memory work."""

    def __init__(self, endpoint: str) -> None:
        from proxy.gateway import ModelRoute

        self._route = ModelRoute(MODEL, phase="Ready", endpoint=endpoint, max_concurrency=1024)
        self.in_flight = 0
        self.records: deque[Any] = deque(maxlen=10_000)

    def routes(self) -> list[Any]:
        return [self._route]

    def route(self, name: str) -> Any:
        return self._route if name == MODEL else None

    async def wake(self, model: str) -> str:
        return self._route.endpoint  # type: ignore[return-value]

    def begin_request(self, model: str) -> None:
        self.in_flight += 1

    def end_request(self, model: str) -> None:
        self.in_flight -= 1

    def backend_failed(self, model: str, reason: str) -> None:
        print(f"backend failed: {reason}", file=sys.stderr)

    def record_request(self, record: Any) -> None:
        self.records.append(record)

    def api_keys(self) -> list[Any]:
        return []

    def readiness(self) -> tuple[bool, str]:
        return True, "bench"

    async def status(self) -> dict[str, Any]:
        return {"models": []}

    async def events(self, model: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        return []

    async def follow_events(self) -> AsyncIterator[dict[str, Any]]:
        if False:
            yield {}

    async def reconcile(self) -> dict[str, Any]:
        return {}

    async def load(self, model: str) -> None:
        return None

    async def unload(self, model: str) -> None:
        return None


def serve_proxy(backend: str, access_log: bool, loop: str) -> None:
    """Child process: serve the proxy on a free port; print it on stdout."""
    import socket

    import uvicorn

    from proxy import ProxySettings, create_app
    from proxy.logsetup import setup_logging

    if access_log:
        setup_logging("json", "INFO", stream=open(os.devnull, "w"))  # noqa: SIM115
    app = create_app(StaticGateway(backend), ProxySettings(access_log=access_log))
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only for
    # sockets that say so, and without it Nagle + delayed ACK add ~40 ms per reply.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    if loop == "auto":
        loop = "uvloop" if _importable("uvloop") else "asyncio"
    from proxy import http_protocol

    http = "native"
    config = uvicorn.Config(
        app, loop=loop, http=http_protocol(app), access_log=False, log_level="warning", backlog=1024
    )
    print(f"listening {sock.getsockname()[1]} loop={loop} http={http}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


# --- the load generator --------------------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection; parses just enough of the reply to time it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, path: str, body: bytes) -> tuple[float, float]:
        """(seconds to the first body byte, seconds to the end of the reply)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        start = time.perf_counter()
        self.writer.write(head + body)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"status {status}: {headers!r}")
        lower = headers.lower()
        first = None
        if b"transfer-encoding: chunked" in lower:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if first is None:
                    first = time.perf_counter()
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
            await self.reader.readexactly(length)
            first = time.perf_counter()
        end = time.perf_counter()
        return first - start, end - start

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class Result:
    latencies: list[float]
    firsts: list[float]
    seconds: float

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.seconds


async def load(port: int, body: bytes, concurrency: int, requests: int) -> Result:
    connections = [Connection("127.0.0.1", port) for _ in range(concurrency)]
    latencies: list[float] = []
    firsts: list[float] = []
    remaining = requests

    async def worker(conn: Connection) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            first, total = await conn.request("/v1/chat/completions", body)
            firsts.append(first)
            latencies.append(total)

    # Warm up: open every connection, fill pools, JIT nothing (CPython) but caches.
    await asyncio.gather(*(c.request("/v1/chat/completions", body) for c in connections))
    start = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in connections))
    seconds = time.perf_counter() - start
    for conn in connections:
        conn.close()
    return Result(latencies, firsts, seconds)


def wait_serving(port: int, timeout: float = 30.0) -> None:
    """Until the proxy answers /healthz (it prints its port before uvicorn listens)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f}"


async def bench(direct_port: int, proxy_port: int, requests: int, rounds: int) -> None:
    print(
        f"{'case':<18} {'direct p50':>10} {'p99':>7} {'proxy p50':>10} {'p99':>7} "
        f"{'added p50':>10} {'p99':>7} {'+1st chunk':>10} {'rps direct':>10} {'rps proxy':>9} "
        f"{'ratio':>6}"
    )
    for stream in (False, True):
        payload: dict[str, Any] = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "benchmark prompt with a few words"}],
            "max_tokens": 16,
        }
        if stream:
            payload["stream"] = True
        body = json.dumps(payload).encode()
        for concurrency in (1, 64):
            n = requests if concurrency == 1 else requests * 2
            direct = Result([], [], 0.0)
            proxied = Result([], [], 0.0)
            for _ in range(rounds):  # alternate, so drift in the machine's load hits both
                for port, into in ((direct_port, direct), (proxy_port, proxied)):
                    result = await load(port, body, concurrency, n)
                    into.latencies += result.latencies
                    into.firsts += result.firsts
                    into.seconds += result.seconds
            d50, d99 = pct(direct.latencies, 0.5), pct(direct.latencies, 0.99)
            p50, p99 = pct(proxied.latencies, 0.5), pct(proxied.latencies, 0.99)
            first_added = statistics.median(proxied.firsts) - statistics.median(direct.firsts)
            name = f"{'stream' if stream else 'plain'} c={concurrency}"
            print(
                f"{name:<18} {ms(d50):>10} {ms(d99):>7} {ms(p50):>10} {ms(p99):>7} "
                f"{ms(p50 - d50):>10} {ms(p99 - d99):>7} {ms(first_added):>10} "
                f"{direct.throughput:>10.0f} {proxied.throughput:>9.0f} "
                f"{proxied.throughput / direct.throughput:>6.0%}",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="per round at c=1 (x2 at 64)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="with an access log (proxy alone: JSON to /dev/null; --run: its log file)",
    )
    parser.add_argument(
        "--loop", choices=["auto", "asyncio", "uvloop"], default="auto", help="the proxy's loop"
    )
    parser.add_argument(
        "--run", action="store_true", help="measure the real `modelplane run` (not a static one)"
    )
    parser.add_argument("--serve-proxy", metavar="BACKEND_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxy:
        serve_proxy(args.serve_proxy, args.access_log, args.loop)
        return 0
    if args.run:
        return bench_run(args.requests, args.rounds, args.access_log)

    from tests.helpers.backend import start_fake_backend

    with start_fake_backend("--model-name", MODEL, "--tokens", "16") as backend:
        command = [sys.executable, __file__, "--serve-proxy", backend.url, "--loop", args.loop]
        if args.access_log:
            command.append("--access-log")
        proxy = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        try:
            assert proxy.stdout is not None
            line = proxy.stdout.readline().split()
            if not line:
                raise RuntimeError("the proxy process did not start")
            wait_serving(int(line[1]))
            print(
                f"machine: {os.cpu_count()} CPUs, load average "
                f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
                f"proxy: {' '.join(line[2:])}, pid {proxy.pid}; backend pid {backend.pid}"
            )
            try:
                import uvloop

                uvloop.install()
            except ImportError:
                pass
            asyncio.run(bench(backend.port, int(line[1]), args.requests, args.rounds))
        finally:
            proxy.terminate()
            proxy.wait(10)
    return 0


def bench_run(requests: int, rounds: int, access_log: bool) -> int:
    """The same benchmark against ``modelplane run`` and the backend it started
    (``access_log``: Node ``proxy.accessLog``; the SQLite request log is kept either way)."""
    import tempfile

    from tests.helpers.manifests import ManifestDir, doc, fake_engine_doc, model_doc
    from tests.helpers.service import cleanup, start_service

    with tempfile.TemporaryDirectory(prefix="modelplane-bench-") as tmp:
        root = Path(tmp)
        manifests = ManifestDir(root / "manifests")
        manifests.write(
            "bench.yaml",
            doc(
                "Node",
                "bench",
                {"runtime": "process", "gpus": "none", "proxy": {"accessLog": access_log}},
            ),
            fake_engine_doc("fake", "--tokens", "16"),
            model_doc(MODEL, pin=True, maxConcurrency=1024),
        )
        state = root / "state"
        service = start_service(manifests.root, state)
        try:
            entry = service.wait_phase(MODEL, "Ready", timeout=60)
            backend_port = int(entry["endpoint"].rsplit(":", 1)[1])
            print(
                f"machine: {os.cpu_count()} CPUs, load average "
                f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
                f"proxy: modelplane run, pid {service.process.pid}; backend {entry['endpoint']}"
            )
            try:
                import uvloop

                uvloop.install()
            except ImportError:
                pass
            asyncio.run(bench(backend_port, service.port, requests, rounds))
        finally:
            service.stop()
            cleanup(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
