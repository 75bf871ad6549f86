"""What the proxy adds, side by side with nginx: the same requests straight to a fast backend,
through nginx, and through modelplane.

    python tests/bench/proxy_overhead.py [--run] [--rounds 3] [--seconds 5] [--backend fast]

- The backend is ``tests/bench/fast_backend.py`` (a raw ASGI app on uvicorn, ~0.1 ms a reply,
  so that the proxies' own cost shows); ``--backend stdlib`` uses ``tests/fakebackend.py``.
  Streamed replies are 100 chunks, 10 ms apart (``--chunks``, ``--interval``).
- modelplane is, by default, the proxy alone (uvicorn with ``http_protocol(app)``, as
  ``modelplane run`` serves it, in front of a gateway that says the model is Ready); with
  ``--run`` it is the real ``modelplane run`` (reconcile loop, request log, idle clocks), which
  starts the backend itself from a temporary manifest directory.
- nginx is Debian's ``nginx`` (``apt-get install -y nginx`` as root), configured here: one
  worker, keep-alive connections to the backend, no access log, no buffering. Without it the
  nginx column is left out, with a message.
- Non-streamed load comes from ``wrk -t1`` (``apt-get install -y wrk``): at concurrency 1 for
  latency, at 64 for throughput. Without wrk a small Python client stands in (slower, so the
  throughput ratios are lower bounds).
- Streams: 64 at once, each 100 chunks 10 ms apart; the proxy's CPU time per 1,000 forwarded
  chunks, and the gaps between chunks as the client sees them.

Rounds alternate direct, nginx and modelplane, so that drift in the machine's load hits all
three. Besides latency and throughput, each proxy's CPU time per request (utime + stime from
/proc/PID/stat, all its processes and threads) is printed: it is far less sensitive than
throughput to other work on a shared machine. A script, not a test: the numbers depend on the
machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MODEL = "bench"
FAST_BACKEND = ROOT / "tests" / "bench" / "fast_backend.py"
TICK = os.sysconf("SC_CLK_TCK")


# --- the proxy alone (the default) ---------------------------------------------------------------


class StaticGateway:
    """One model, always Ready at the backend's endpoint; the accounting a real gateway does is
    kept as cheap in-memory work."""

    def __init__(self, endpoint: str) -> None:
        from collections import deque

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

    def request_timed_out(self, model: str, message: str) -> None:
        print(f"timed out: {message}", file=sys.stderr)

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
    """Child process: serve the proxy on a free port as ``modelplane run`` does; print the port."""
    import contextlib

    import uvicorn

    from proxy import ProxySettings, create_app, http_protocol
    from proxy.logsetup import setup_logging
    from proxy.server import settle_gc

    if access_log:
        setup_logging("json", "INFO", stream=open(os.devnull, "w"))  # noqa: SIM115

    @contextlib.asynccontextmanager
    async def settle(_: object) -> AsyncIterator[None]:
        settle_gc()  # as modelplane run does once started
        yield

    app = create_app(
        StaticGateway(backend), ProxySettings(access_log=access_log), lifespan=[settle]
    )
    sock = listening_socket()
    if loop == "auto":
        loop = "uvloop" if _importable("uvloop") else "asyncio"
    config = uvicorn.Config(
        app, loop=loop, http=http_protocol(app), access_log=False, log_level="warning"
    )
    config.backlog = 1024
    print(f"listening {sock.getsockname()[1]} loop={loop}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


def listening_socket() -> socket.socket:
    # proto=IPPROTO_TCP matters: asyncio sets TCP_NODELAY on accepted connections only for
    # sockets that say so, and without it Nagle + delayed ACK add ~40 ms per reply.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- processes: backend, proxy, nginx ------------------------------------------------------------


@dataclass
class Target:
    """Something to send requests to, and the processes whose CPU time is its cost."""

    name: str
    port: int
    pids: Callable[[], list[int]] = list

    def cpu_seconds(self) -> float:
        """utime + stime of its processes (each process's own counts include its threads)."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / TICK


def wait_http(port: int, path: str = "/health", timeout: float = 30.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def backend_command(kind: str, chunks: int, interval: float) -> list[str]:
    if kind == "fast":
        return [
            sys.executable,
            str(FAST_BACKEND),
            "--chunks",
            str(chunks),
            "--interval",
            str(interval),
        ]
    return [
        sys.executable,
        str(ROOT / "tests" / "fakebackend.py"),
        "--model-name",
        MODEL,
        "--tokens",
        "16",
        "--token-delay",
        str(interval),
    ]


@contextmanager
def started_backend(kind: str, chunks: int, interval: float) -> Iterator[Target]:
    port = free_port()
    command = [*backend_command(kind, chunks, interval), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(port)
        yield Target("direct", port, lambda: [process.pid])
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def started_proxy(backend: Target, access_log: bool, loop: str) -> Iterator[Target]:
    command = [
        sys.executable,
        __file__,
        "--serve-proxy",
        f"http://127.0.0.1:{backend.port}",
        "--loop",
        loop,
    ]
    if access_log:
        command.append("--access-log")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        if not line:
            raise RuntimeError("the proxy process did not start")
        port = int(line[1])
        wait_http(port, "/healthz")
        yield Target("modelplane", port, lambda: [process.pid])
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def started_service(
    kind: str, chunks: int, interval: float, access_log: bool
) -> Iterator[tuple[Target, Target]]:
    """``modelplane run`` with a pinned model on the benchmark backend: (backend, proxy)."""
    from tests.helpers.manifests import ManifestDir, doc, model_doc
    from tests.helpers.service import cleanup, start_service

    with tempfile.TemporaryDirectory(prefix="modelplane-bench-") as tmp:
        root = Path(tmp)
        manifests = ManifestDir(root / "manifests")
        command = [*backend_command(kind, chunks, interval), "--host", "{host}", "--port", "{port}"]
        manifests.write(
            "bench.yaml",
            doc(
                "Node",
                "bench",
                {"runtime": "process", "gpus": "none", "proxy": {"accessLog": access_log}},
            ),
            doc("Engine", "bench", {"command": command, "healthPath": "/health"}),
            model_doc(MODEL, engine="bench", pin=True, maxConcurrency=1024),
        )
        state = root / "state"
        service = start_service(manifests.root, state)
        try:
            entry = service.wait_phase(MODEL, "Ready", timeout=60)
            backend_port = int(entry["endpoint"].rsplit(":", 1)[1])
            yield (
                Target("direct", backend_port),
                Target("modelplane", service.port, lambda: [service.process.pid]),
            )
        finally:
            service.stop()
            cleanup(state)


NGINX_CONF = """
worker_processes {workers};
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


@contextmanager
def started_nginx(backend: Target, workers: int) -> Iterator[Target | None]:
    """nginx in front of ``backend``; ``None`` (with a message) when it is not installed."""
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        print(
            "nginx not found: the nginx column is left out "
            "(Debian/Ubuntu: `apt-get install -y nginx` as root)",
            flush=True,
        )
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="modelplane-bench-nginx-") as tmp:
        port = free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(workers=workers, dir=tmp, backend=backend.port, port=port)
        )
        command = [binary, "-c", str(conf), "-p", tmp]
        if subprocess.run([binary, "-h"], capture_output=True, text=True).stderr.count(" -e "):
            command += ["-e", str(Path(tmp) / "error.log")]  # before the config is read
        master = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            try:
                wait_http(port, "/health", timeout=10)
            except OSError:
                master.kill()
                _, errors = master.communicate(timeout=5)
                print(f"nginx did not start, left out: {errors.decode()[-500:]}", flush=True)
                yield None
                return
            yield Target("nginx", port, lambda: [master.pid, *children(master.pid)])
        finally:
            if master.poll() is None:
                master.terminate()
                master.wait(10)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


# --- non-streamed load ---------------------------------------------------------------------------


@dataclass
class LoadResult:
    requests: int
    seconds: float
    p50: float  # seconds
    p99: float
    cpu: float  # seconds of the target's processes

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_per_request(self) -> float:
        return self.cpu / self.requests


def request_body(stream: bool, chunks: int) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "benchmark prompt with a few words"}],
        "max_tokens": chunks if stream else 16,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


def wrk_load(target: Target, concurrency: int, seconds: float, body: bytes) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(body.decode())}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    try:
        before = target.cpu_seconds()
        done = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{concurrency}",
                f"-d{seconds:g}s",
                "--latency",
                "-s",
                script.name,
                f"http://127.0.0.1:{target.port}/v1/chat/completions",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        cpu = target.cpu_seconds() - before
    finally:
        os.unlink(script.name)
    out = done.stdout
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"warning: {target.name}: {out.strip().splitlines()[-3:]}", flush=True)
    requests = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return LoadResult(
        requests, requests / rps, _wrk_latency(out, "50%"), _wrk_latency(out, "99%"), cpu
    )


def _wrk_latency(out: str, label: str) -> float:
    value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(\w+)", out, re.M).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0}[unit]


async def python_load(target: Target, concurrency: int, seconds: float, body: bytes) -> LoadResult:
    """Without wrk: keep-alive connections sending the request back to back for ``seconds``."""
    latencies: list[float] = []
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", target.port)
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                writer.write(head + body)
                headers = await reader.readuntil(b"\r\n\r\n")
                length = int(headers.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    before = target.cpu_seconds()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    cpu = target.cpu_seconds() - before
    latencies.sort()
    return LoadResult(
        len(latencies),
        elapsed,
        latencies[len(latencies) // 2],
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        cpu,
    )


SENT = re.compile(rb'"sent":([\d.]+)')  # when fast_backend.py wrote the chunk

# --- streams -------------------------------------------------------------------------------------


@dataclass
class StreamResult:
    events: int = 0
    cpu: float = 0.0
    first: list[float] = field(default_factory=list)  # seconds to the first data event
    delays: list[float] = field(default_factory=list)  # sent by the backend → read here


async def one_stream(port: int, body: bytes, into: StreamResult) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    start = time.perf_counter()
    writer.write(head + body)
    headers = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in headers.split(b"\r\n", 1)[0]:
        raise RuntimeError(f"stream answered {headers[:200]!r}")
    buffer = b""
    first = True
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        data = await reader.readexactly(size + 2)
        if size == 0:
            break
        now, wall = time.perf_counter(), time.time()
        buffer += data[:-2]
        while b"\n\n" in buffer:
            event, buffer = buffer.split(b"\n\n", 1)
            if not event.startswith(b"data:"):
                continue
            into.events += 1
            if first:
                into.first.append(now - start)
                first = False
            sent = SENT.search(event)
            if sent:
                into.delays.append(wall - float(sent.group(1)))
    writer.close()


async def streams(target: Target, count: int, body: bytes) -> StreamResult:
    result = StreamResult()
    before = target.cpu_seconds()
    await asyncio.gather(*(one_stream(target.port, body, result) for _ in range(count)))
    result.cpu = target.cpu_seconds() - before
    return result


# --- the benchmark -------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def ms_signed(seconds: float) -> str:
    return f"{seconds * 1000:+.2f}"


def run_bench(targets: list[Target], args: argparse.Namespace) -> None:
    plain = request_body(False, args.chunks)
    streamed = request_body(True, args.chunks)
    use_wrk = shutil.which("wrk") is not None
    if not use_wrk:
        print(
            "wrk not found: a Python client stands in (Debian/Ubuntu: `apt-get install -y wrk`)",
            flush=True,
        )

    def load(target: Target, concurrency: int) -> LoadResult:
        if use_wrk:
            return wrk_load(target, concurrency, args.seconds, plain)
        return asyncio.run(python_load(target, concurrency, args.seconds, plain))

    c1: dict[str, list[LoadResult]] = {t.name: [] for t in targets}
    c64: dict[str, list[LoadResult]] = {t.name: [] for t in targets}
    sr: dict[str, list[StreamResult]] = {t.name: [] for t in targets}
    for number in range(args.rounds):
        for target in targets:  # alternate, so drift in the machine's load hits all
            c64[target.name].append(load(target, 64))
            c1[target.name].append(load(target, 1))
            sr[target.name].append(asyncio.run(streams(target, args.streams, streamed)))
        print(f"round {number + 1}/{args.rounds} done", flush=True)

    def median(values: list[float]) -> float:
        return statistics.median(values)

    direct = targets[0].name
    d50 = median([r.p50 for r in c1[direct]])
    d_rps = median([r.rps for r in c64[direct]])
    d_first = median([statistics.median(r.first) for r in sr[direct]])
    names = [t.name for t in targets]
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, cell: Callable[[str], str]) -> None:
        rows.append((label, [cell(name) for name in names]))

    row(
        "c=1 p50 / p99 (ms)",
        lambda n: f"{ms(median([r.p50 for r in c1[n]]))} / {ms(median([r.p99 for r in c1[n]]))}",
    )
    row(
        "c=1 added p50 (ms)",
        lambda n: "—" if n == direct else ms_signed(median([r.p50 for r in c1[n]]) - d50),
    )
    row(
        "c=64 req/s (% of direct)",
        lambda n: (
            f"{median([r.rps for r in c64[n]]):,.0f}"
            + ("" if n == direct else f" ({median([r.rps for r in c64[n]]) / d_rps:.0%})")
        ),
    )
    row(
        "proxy CPU µs / request, c=64",
        lambda n: (
            "—" if n == direct else f"{median([r.cpu_per_request for r in c64[n]]) * 1e6:.0f}"
        ),
    )
    row(
        "proxy CPU µs / request, c=1",
        lambda n: "—" if n == direct else f"{median([r.cpu_per_request for r in c1[n]]) * 1e6:.0f}",
    )
    row(
        f"streams ({args.streams} x {args.chunks}): proxy CPU ms / 1,000 chunks",
        lambda n: (
            "—" if n == direct else f"{median([r.cpu / r.events * 1000 for r in sr[n]]) * 1000:.1f}"
        ),
    )
    row("streams: chunk delay, backend → client, p50 / p99 (ms)", lambda n: _delays(sr[n]))
    row(
        "streams: added time to first chunk (ms)",
        lambda n: (
            "—"
            if n == direct
            else ms_signed(median([statistics.median(r.first) for r in sr[n]]) - d_first)
        ),
    )

    print()
    print(f"| | {' | '.join(names)} |")
    print(f"|---|{'---|' * len(names)}")
    for label, cells in rows:
        print(f"| {label} | {' | '.join(cells)} |")
    print()
    print(
        f"{args.rounds} rounds of {args.seconds:g} s per case and target, medians; "
        f"{'wrk -t1' if use_wrk else 'Python client'}; {os.cpu_count()} CPUs shared by client, "
        f"proxies and backend; load average now {os.getloadavg()[0]:.1f}."
    )


def _delays(results: list[StreamResult]) -> str:
    delays = sorted(d for r in results for d in r.delays)
    if not delays:
        return "— (stdlib backend)"
    p50 = delays[len(delays) // 2]
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
    return f"{ms(p50)} / {ms(p99)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--backend", choices=["fast", "stdlib"], default="fast")
    parser.add_argument("--chunks", type=int, default=100, help="chunks per streamed reply")
    parser.add_argument("--interval", type=float, default=0.01, help="seconds between chunks")
    parser.add_argument("--streams", type=int, default=64, help="concurrent streams")
    parser.add_argument("--nginx-workers", type=int, default=1)
    parser.add_argument("--no-nginx", action="store_true")
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

    def with_nginx(backend: Target, proxy: Target) -> None:
        if args.no_nginx:
            run_bench([backend, proxy], args)
            return
        with started_nginx(backend, args.nginx_workers) as nginx:
            run_bench([backend, *([nginx] if nginx else []), proxy], args)

    print(
        f"machine: {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; backend: {args.backend}; "
        f"modelplane: {'modelplane run' if args.run else 'the proxy alone'}",
        flush=True,
    )
    if args.run:
        with started_service(args.backend, args.chunks, args.interval, args.access_log) as (
            backend,
            proxy,
        ):
            with_nginx(backend, proxy)
    else:
        with (
            started_backend(args.backend, args.chunks, args.interval) as backend,
            started_proxy(backend, args.access_log, args.loop) as proxy,
        ):
            with_nginx(backend, proxy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
