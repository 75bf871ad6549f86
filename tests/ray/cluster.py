"""A real local Ray cluster for tests: a head and worker nodes, each its own ``ray start`` process.

Several raylets on one machine is how Ray tests itself. Every node runs ``ray start --block`` in
a process group of its own, with a temporary directory of its own (nodes started side by side
would race for log file names in a shared one), so a test can kill one node's raylet (a lost
node). Every process of the cluster, and every process those start (actors, the engines they
launch), carries ``MODELPLANE_TEST_CLUSTER=<root>`` in its environment: teardown ends exactly
those, never anyone else's Ray. The footprint is kept
small: one CPU per node, a 78 MB object store, no dashboard, no usage stats. The GCS declares a
node dead after about 3 s without a health check answer (Ray's default is about 15 s).

    cluster = LocalRayCluster(tmp_dir)
    cluster.start_head()
    cluster.add_worker("worker-a", num_gpus=2, labels={"zone": "a"})
    ...
    cluster.stop()
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.backend import free_port

OBJECT_STORE = 75 * 2**20  # bytes: Ray's minimum
STARTED = "Ray runtime started"
GPU_MEMORY_LABEL = "modelplane.io/gpu-memory"
MARKER = "MODELPLANE_TEST_CLUSTER"

# Ray reads its system config from RAY_<name> in the environment of the processes it starts.
FAST_FAILURE_DETECTION = {
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


class ClusterError(Exception):
    pass


@dataclass
class RayNodeProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_start: int = 0  # where this process's part of the log begins (a restarted node)

    def log_text(self) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self.log_start)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def raylet_pid(self) -> int | None:
        """The pid of this node's raylet (a child of its ``ray start --block`` process)."""
        for pid in _children(self.process.pid):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                return pid
        return None

    @property
    def running(self) -> bool:
        return self.process.poll() is None


class LocalRayCluster:
    def __init__(
        self, root: Path, env: dict[str, str] | None = None, port: int | None = None
    ) -> None:
        self.root = root
        self.port = port or free_port()
        self.client_port = free_port()
        self.nodes: dict[str, RayNodeProcess] = {}
        self._workers: dict[str, list[str]] = {}  # name -> its ray start arguments
        self._dirs = itertools.count()
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            "RAY_AUTH_MODE": "disabled",  # a token file on this machine must not change it
            MARKER: str(root),
            **FAST_FAILURE_DETECTION,
            **(env or {}),
        }

    @property
    def address(self) -> str:
        """The GCS address (what ``ray start --address`` and a driver take)."""
        return f"127.0.0.1:{self.port}"

    @property
    def client_address(self) -> str:
        """The Ray Client address (``ray://``)."""
        return f"ray://127.0.0.1:{self.client_port}"

    def start_head(self, timeout: float = 90.0) -> RayNodeProcess:
        args = [
            "--head",
            f"--port={self.port}",
            f"--ray-client-server-port={self.client_port}",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--labels=name=head",
        ]
        node = self._spawn("head", args)
        self._wait_started(node, timeout)
        return node

    def add_worker(
        self,
        name: str,
        num_gpus: int = 2,
        gpu_memory: str | None = "24GiB",
        labels: dict[str, str] | None = None,
        resources: dict[str, float] | None = None,
        wait: bool = True,
        timeout: float = 90.0,
    ) -> RayNodeProcess:
        """A worker node with ``num_gpus`` logical GPUs of ``gpu_memory`` each (a label)."""
        all_labels = {"name": name, **(labels or {})}
        if gpu_memory:
            all_labels[GPU_MEMORY_LABEL] = gpu_memory
        args = [
            f"--address={self.address}",
            f"--num-gpus={num_gpus}",
            "--labels=" + ",".join(f"{k}={v}" for k, v in all_labels.items()),
        ]
        if resources:
            args.append("--resources=" + json.dumps(resources))
        self._workers[name] = args
        node = self._spawn(name, args)
        if wait:
            self._wait_started(node, timeout)
        return node

    def restart_worker(self, name: str, timeout: float = 90.0) -> RayNodeProcess:
        """Start a lost worker again, as it was (a new Ray node: a new id, same labels)."""
        old = self.nodes.pop(name, None)
        if old is not None:
            _stop_group(old.process, 10)
        node = self._spawn(name, self._workers[name])
        self._wait_started(node, timeout)
        return node

    def wait_started(self, name: str, timeout: float = 90.0) -> None:
        self._wait_started(self.nodes[name], timeout)

    def kill_raylet(self, name: str) -> int:
        """SIGKILL a node's raylet: to the cluster, that node is lost."""
        node = self.nodes[name]
        pid = node.raylet_pid()
        if pid is None:
            raise ClusterError(f"{name} has no raylet:\n{node.log_text()[-2000:]}")
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop_node(self, name: str, timeout: float = 30.0) -> None:
        node = self.nodes.pop(name)
        _stop_group(node.process, timeout)

    def stop(self) -> None:
        """Stop every node (workers first), then anything left that carries this cluster's
        marker (engines that actors started) — this cluster's processes only."""
        for name in [n for n in self.nodes if n != "head"] + ["head"]:
            if name in self.nodes:
                with contextlib.suppress(Exception):
                    self.stop_node(name)
        for pid in leftover_pids(self.root):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # --- processes --------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> RayNodeProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        log_path = self.root / f"{name}.log"
        common = [
            "--block",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            f"--object-store-memory={OBJECT_STORE}",
            f"--dashboard-agent-listen-port={free_port()}",
            "--disable-usage-stats",
            f"--temp-dir={self.root / str(next(self._dirs))}",  # short: unix socket paths
        ]
        ray = str(Path(sys.executable).with_name("ray"))
        start = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as log:  # (a restarted node appends to its log)
            process = subprocess.Popen(
                [ray, "start", *args, *common],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        node = RayNodeProcess(name, process, log_path, start)
        self.nodes[name] = node
        return node

    def _wait_started(self, node: RayNodeProcess, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while STARTED not in node.log_text():
            if not node.running or time.monotonic() > deadline:
                why = "exited" if not node.running else f"not started after {timeout:.0f}s"
                raise ClusterError(f"ray node {node.name} {why}:\n{node.log_text()[-3000:]}")
            time.sleep(0.2)


def _stop_group(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the ``ray start --block`` process (it stops its node's processes), then
    SIGKILL whatever of its group is left."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def leftover_pids(root: Path) -> list[int]:
    """Processes that carry the marker of the cluster under ``root`` in their environment."""
    marker = f"{MARKER}={root}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found
