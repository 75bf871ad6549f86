"""What runs on a Ray node: one detached actor per model that supervises the model's engine.

The Ray runtime (:mod:`reconciler.runtimes.ray`) creates a :class:`ModelBackend` actor per model,
named after the model in modelplane's namespace, pinned to the node modelplane chose. The actor

1. runs the launch's ``prepare`` step on its node: for a Hugging Face source, the same weights
   code a single box uses downloads it into the node's own cache
   (:func:`reconciler.weights.remote.fetch_on_node`); a ``path`` source is used in place (a
   local or a shared path) and needs nothing;
2. starts the Engine's command as a child process group, with ``{host}`` the node's IP and a
   free port there, and ``CUDA_VISIBLE_DEVICES`` the GPUs Ray assigned to the actor;
3. reports where it serves (:meth:`ModelBackend.describe`) and when the engine exits
   (:meth:`ModelBackend.wait_exit`).

The actor is asynchronous (every method is a coroutine on one event loop), so ``describe`` and
``logs`` answer while a start downloads or waits for the engine's health check. Every node needs
modelplane installed (``pip install 'modelplane[ray]'``): Ray imports this module there.

The class is plain Python (the driver makes it remote), and Ray is imported only where it is
used, so importing this module costs little.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import Prepare, render_command
from .health import answers_200, health_client
from .process import tail

#: Bumped when the controller/actor contract changes: an actor of another version is reported
#: as such rather than misread (every Ray node must run the controller's modelplane version).
PROTOCOL = 1
# The engine runs under this guard: it asks Linux to SIGKILL it when the actor (its parent)
# dies, then becomes the engine (exec). An actor killed abruptly — OOM killer, a crash, a
# node whose raylet is gone — thus never leaves an engine holding GPU memory and a port.
ENGINE_GUARD = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(70)  # the actor died before the guard was set
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    print(f"cannot run {sys.argv[2]!r}: {exc.strerror or exc}", file=sys.stderr)
    sys.exit(127)
"""
HEALTH_POLL = 0.2  # seconds between health checks while the engine starts
LOG_TAIL_LINES = 20


@dataclass(frozen=True)
class BackendSpec:
    """Everything the actor needs to run one model's engine on its node.

    ``command`` still holds the placeholders that only the node can fill: ``{host}``,
    ``{port}``, ``{python}``, and those that ``prepare`` returns (``{model_path}``...).
    """

    model: str
    labels: dict[str, str]
    spec: dict[str, Any]
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = "/health"
    startup_timeout: float = 600.0
    prepare: Prepare | None = None
    log_dir: str | None = None  # where the engine's log goes; None = <tmp>/modelplane-logs


class ModelBackend:
    """Supervises one engine process on the node the actor was placed on."""

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.state = "starting"  # starting | running | exited
        self.detail = "actor created"
        self.endpoint: str | None = None
        self.pid: int | None = None
        self.started_at = time.time()
        self.actor_id, self.node_id, self.node_ip = _identity()
        self.gpus = _assigned_gpus()
        log_dir = Path(spec.log_dir or Path(tempfile.gettempdir()) / "modelplane-logs")
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{spec.model}-{os.getpid()}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._start: asyncio.Task[dict[str, Any]] | None = None
        self._exited: asyncio.Event | None = None

    # --- the controller's calls -------------------------------------------------------------

    async def start(self) -> dict[str, Any]:
        """Weights, engine, health: the description once ready (``state`` says how it went).
        A second call (a controller that restarted meanwhile) joins the first."""
        if self._start is None:
            self._exited = asyncio.Event()
            self._start = asyncio.create_task(self._run())
        return await asyncio.shield(self._start)

    async def describe(self) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL,
            "model": self.spec.model,
            "labels": dict(self.spec.labels),
            "spec": self.spec.spec,
            "state": self.state,
            "detail": self.detail,
            "endpoint": self.endpoint,
            "health_path": self.spec.health_path,
            "actor_id": self.actor_id,
            "actor_pid": os.getpid(),
            "pid": self.pid,
            "node_id": self.node_id,
            "node_ip": self.node_ip,
            "gpus": list(self.gpus),
            "started_at": self.started_at,
        }

    async def wait_exit(self) -> dict[str, Any]:
        """Returns when the engine has exited (the controller keeps one call pending per
        actor: its result, or the actor's death, is how the controller learns at once)."""
        while self._exited is None:
            await asyncio.sleep(0.5)
        await self._exited.wait()
        return await self.describe()

    async def logs(self, lines: int = 50) -> str:
        return tail(self.log_path, lines)

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the engine's process group, SIGKILL after ``grace``; the controller then
        kills the actor itself."""
        if self._start is not None and not self._start.done():
            self._start.cancel()
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    # --- starting ---------------------------------------------------------------------------

    async def _run(self) -> dict[str, Any]:
        try:
            values = await self._weights()
            port = _free_port(self.node_ip)
            gpus = ",".join(map(str, self.gpus))
            values |= {"host": self.node_ip, "port": str(port), "python": sys.executable}
            values |= {"gpus": gpus}
            command = render_command(self.spec.command, values)
            self._spawn(command)
            await self._wait_healthy(f"http://{_url_host(self.node_ip)}:{port}")
        except asyncio.CancelledError:
            self._exit("stopped while starting")
            raise
        except Exception as exc:  # any failure of a start is the start's outcome, not a crash
            self._exit(str(exc), log_tail=tail(self.log_path, LOG_TAIL_LINES))
        else:
            asyncio.get_running_loop().create_task(self._watch())
        return await self.describe()

    async def _weights(self) -> dict[str, str]:
        """More placeholder values from the launch's ``prepare`` step, run on this node."""
        if self.spec.prepare is None:
            return {}
        values = await asyncio.to_thread(self.spec.prepare, self._note)
        return dict(values)

    def _note(self, detail: str) -> None:
        self.detail = f"{detail} (on {self.node_ip})"

    def _spawn(self, command: list[str]) -> None:
        env = {**os.environ, **self.spec.env}
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpus))
        with self.log_path.open("ab") as log:
            log.write(f"--- modelplane: {time.ctime()}: {' '.join(command)}\n".encode())
            log.flush()
            guarded = [sys.executable, "-c", ENGINE_GUARD, str(os.getpid()), *command]
            try:
                self._proc = subprocess.Popen(
                    guarded,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # stop() signals the engine's whole group
                    close_fds=True,
                )
            except OSError as exc:
                raise RuntimeError(f"cannot run {command[0]!r}: {exc.strerror or exc}") from exc
        self.pid = self._proc.pid
        self.detail = "engine started, waiting for its health check"

    async def _wait_healthy(self, url: str) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.spec.startup_timeout
        async with health_client() as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    raise RuntimeError(f"backend {_how(code)} before becoming ready")
                if await answers_200(url + self.spec.health_path, client):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.spec.health_path} did not answer 200 within "
                        f"{self.spec.startup_timeout:.0f}s (startupTimeout)"
                    )
                await asyncio.sleep(HEALTH_POLL)
        self.endpoint = url
        self.state = "running"
        self.detail = ""

    async def _watch(self) -> None:
        proc = self._proc
        assert proc is not None
        while (code := proc.poll()) is None:
            await asyncio.sleep(0.2)
        self._exit(f"{_how(code)} on node {self.node_ip}", tail(self.log_path, LOG_TAIL_LINES))

    def _exit(self, reason: str, log_tail: str = "") -> None:
        if self._proc is not None and self._proc.poll() is None:
            _signal_group(self._proc.pid, signal.SIGKILL)
        self.state = "exited"
        self.endpoint = None
        self.detail = f"{reason}\n--- last log lines ---\n{log_tail}" if log_tail else reason
        if self._exited is not None:
            self._exited.set()


# --- small helpers ----------------------------------------------------------------------------


def _identity() -> tuple[str, str, str]:
    """(actor id, node id, node IP) of this actor and the Ray node it runs on."""
    import ray

    context = ray.get_runtime_context()
    return context.get_actor_id() or "", context.get_node_id(), ray.util.get_node_ip_address()


def _assigned_gpus() -> tuple[int, ...]:
    """The GPU ids Ray gave this actor (``num_gpus``), in Ray's (PCI bus) numbering."""
    import ray

    return tuple(int(g) for g in ray.get_gpu_ids())


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _url_host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _how(code: int) -> str:
    return f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
